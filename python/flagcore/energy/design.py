def sweep(): pass
def optimize(): pass
def pareto_front(): pass
class OptimizeResult: pass
class SweepResult: pass
