// Event-driven simulator of the (n, k) fork-join service with speed levels and energy
// (the model of docs/spec_energy.md; usage in docs/energy-usage.md; options and validation in
// docs/energy.md).
//
// A request arriving (Poisson, rate arrival_rate) is forked into n tasks, one per server; each
// server is FCFS with an unbounded queue; the request departs at the k-th completion of its
// tasks, and with `cancel` its n - k other tasks are then cancelled (the running ones stop, their
// partial work still costs energy). A task has a unit-mean amount of work W drawn from the
// service distribution; a server at level s works at rate rates[s] and draws powers[s], so the
// task takes W / rates[s]. The level is drawn with probabilities probs when the server starts a
// task, or, with `redraw_on_arrival`, by every server at every arrival (the task in service
// keeps its remaining work and continues at the new rate; idle time costs idle_power).
//
// Structure (why there is no heap): every request is forked to all n servers and each is FCFS,
// so server j's queue is always the requests [cur[j], tail) in arrival order, and requests
// depart and are finalised in arrival order. A server therefore needs one pending event (its
// current task's completion) and the arrival stream one: n + 1 event slots, each keyed by
// (time, sequence number) for deterministic ties, searched linearly for n <= 15 and by a
// tournament tree above. Cancelling a task just moves its server to its next request: no stale
// events exist. Per-request state lives in a ring buffer over the requests still in the system
// (or, without cancellation, still running somewhere), so memory is bounded by the number in
// system, not by the number simulated.
//
// Speed policies (`policy`): `random` is the paper's model above. With `threshold`, a server
// runs at level s = #{i : q > thresholds[i]} where q = its queue (tasks waiting + in service at
// that server, late tasks included); the level is evaluated when the server starts a task and
// again at every arrival (the only event that raises q; every event that lowers it starts the
// next task or idles the server), and a task in service whose level changes keeps its remaining
// work and continues at the new rate. With `deadline`, every request has the deadline
// arrival + deadline; a server starting a task picks the slowest level (ascending rate, ties by
// index) whose expected finish, begin + w / rate (w: the task's work if deadline_known_size,
// else the mean 1; begin: the start time plus any switch stall the level needs), meets it, else
// the fastest; the level is kept for the whole task. An idle server keeps its last level.
// A change of level costs switch_energy and, with switch_time > 0, a stall of switch_time at
// switch_power during which the server does no work. A stall, once begun, completes (a
// cancellation does not cut it; the next task starts at its end), and a further change during a
// stall begins when it ends. Stalls are attributed to the measurement window by their start.
//
// Trace replay (trace_arrivals non-empty): the arrival times are given (trace_sizes, if given,
// the work of every task, [requests, n]); the window runs from the first measured arrival until
// the system has emptied after the last one.
//
// Statistics stream: response times go to a log-bucketed histogram (histogram.hpp) per batch;
// sums per batch give batch-means confidence intervals; time averages (number in system, busy
// time per level, energy) are integrated over the window from the arrival of the first measured
// request to the arrival of the first request after the measured ones.
#pragma once
#include <cstdint>
#include <vector>

#include "sim/rng.hpp"

namespace flagcore {
namespace sim {

// What a server does between tasks when sleep states are configured: idle at idle_power for
// SleepState[0].after, then in state 0 for SleepState[1].after, and so on (the last state holds
// until work arrives). Work arriving at a server in state i first pays a wake-up (setup) of
// wake_latency at wake_power; the server is unavailable meanwhile, and a wake-up, once started,
// completes even if the task that caused it is cancelled. Timers and latencies are
// deterministic, or exponential with those means (sleep_exponential / wake_exponential).
struct SleepState {
  double after = 0.0;         // time in the previous state (idle for state 0) before entering
  double power = 0.0;         // power while in this state
  double wake_latency = 0.0;  // setup time to leave it
  double wake_power = 0.0;    // power during that setup
};

enum class SpeedPolicy : int { random = 0, threshold = 1, deadline = 2 };

struct ForkJoinConfig {
  int n = 1, k = 1;
  double arrival_rate = 0.5;
  std::vector<double> rates{1.0}, powers{1.0}, probs{1.0};  // one entry per speed level
  // Heterogeneous servers (empty: every server has the levels above): server j has
  // server_levels[j] levels, and rates/powers/probs list server 0's, then server 1's, ...
  // (each server's probabilities sum to 1). Per-level results follow the same order.
  std::vector<int> server_levels;
  double idle_power = 0.0;
  ServiceKind service = ServiceKind::exponential;
  double service_param = 0.0;
  std::vector<double> empirical;  // ServiceKind::empirical: values with mean 1
  bool cancel = true;
  bool redraw_on_arrival = false;
  std::vector<SleepState> sleep_states;  // empty: a server idles at idle_power
  bool sleep_exponential = false;        // timers exponential (true) or deterministic
  bool wake_exponential = false;         // wake-up latencies exponential (true) or deterministic
  double switch_energy = 0.0;            // energy of one change of a server's speed level
  double switch_time = 0.0;              // stall of one change of level (no work meanwhile)
  double switch_power = 0.0;             // power during that stall
  SpeedPolicy policy = SpeedPolicy::random;
  std::vector<int64_t> thresholds;   // threshold policy: m - 1 non-decreasing queue lengths
  double deadline = 0.0;             // deadline policy: every request's deadline after its arrival
  bool deadline_known_size = false;  // deadline policy: use the task's work (true) or its mean 1
  // Trace replay (non-empty: arrivals given; requests + warmup of them, non-decreasing)
  std::vector<double> trace_arrivals;
  std::vector<double> trace_sizes;  // empty, or [requests + warmup, n] work amounts
  // Markov-modulated Poisson arrivals (empty: Poisson at arrival_rate): in phase i requests
  // arrive at mmpp_rates[i] and the phase changes to j at mmpp_switch[i * phases + j]
  // (diagonal ignored). The run starts in phase 0.
  std::vector<double> mmpp_rates, mmpp_switch;
  // Renewal arrivals (when renewal_arrivals): i.i.d. inter-arrival times, unit-mean draws of
  // arrival_kind (arrival_param, arrival_table as for the service) divided by arrival_rate.
  bool renewal_arrivals = false;
  ServiceKind arrival_kind = ServiceKind::exponential;
  double arrival_param = 0.0;
  std::vector<double> arrival_table;
  int64_t requests = 100000;  // measured requests
  int64_t warmup = 10000;     // requests discarded before them
  int batches = 32;           // batch means; requests >= batches
  uint64_t seed = 0;
  uint64_t stream = 0;              // Philox stream (the replication index)
  int64_t max_in_system = 1 << 22;  // abort (flagged unstable) above this many in system
};

// Sums over the requests of one batch (per-request columns) and over the part of the time
// window attributed to it (time columns: a segment counts in the batch during which it ends).
struct BatchRow {
  double requests;            // measured requests finalised in this batch
  double sum_response;        // their response times, summed
  double sum_energy;          // their dynamic energy (all their tasks, wasted included)
  double sum_wasted_time;     // their busy time on cancelled or late tasks
  double integral_in_system;  // integral of N(t) over the batch's time
  double duration;            // the batch's time
  double dynamic_energy;      // busy energy in the batch's time
  double busy_time;           // busy core-time in the batch's time
  double in_system_at_end;    // N at the batch's end
  double other_energy;        // sleep + wake-up + switching energy in the batch's time
  double other_time;          // core-time asleep or waking in the batch's time
};

// One replication. Time-window quantities cover [t_start, t_end]; per-request quantities the
// `measured` requests warmup .. warmup + requests - 1 (all of them unless `aborted`).
struct ForkJoinResult {
  int64_t measured = 0;
  double t_start = 0.0, t_end = 0.0;
  double sum_response = 0.0, min_response = 0.0, max_response = 0.0;
  double sum_energy = 0.0;       // per-request energy, summed (dynamic only)
  double sum_wasted_time = 0.0;  // busy time on tasks that were not among the k completions
  double sum_wasted_energy = 0.0;
  double integral_in_system = 0.0;         // integral of N(t) over the window
  std::vector<double> busy_time;           // per level: core-time busy in the window
  std::vector<double> busy_energy;         // per level: energy of that busy time
  std::vector<double> wasted_busy_energy;  // per level: part of busy_energy on wasted tasks
  std::vector<double> completions;         // per level: tasks completed in the window
  double dynamic_energy_window = 0.0;
  std::vector<double> sleep_time;               // per sleep state: core-time in it within the window
  std::vector<double> sleep_energy;             // per sleep state: energy in it within the window
  double wake_time = 0.0, wake_energy = 0.0;    // core-time and energy of wake-ups (window)
  int64_t wakeups = 0;                          // wake-ups that started in the window
  int64_t switches = 0;                         // level changes in the window
  double stall_time = 0.0, stall_energy = 0.0;  // core-time and energy of switch stalls (window)
  std::vector<BatchRow> batch;                  // [batches]
  // Response-time histogram per batch, sparse: entry i adds hist_count[i] to bucket
  // hist_bucket[i] (LogHistogramLayout) of batch hist_batch[i]; batches ascending, buckets
  // ascending within a batch. Memory follows the requests, not the histogram's size.
  std::vector<int32_t> hist_batch, hist_bucket;
  std::vector<uint32_t> hist_count;
  int64_t events = 0;  // arrivals + task completions + task cancellations
  int64_t arrivals = 0;
  int64_t max_in_system_seen = 0;
  bool aborted = false;  // number in system exceeded max_in_system
  double wall_seconds = 0.0;
  double cpu_seconds = 0.0;  // CPU time of the thread that ran it (wall time where unavailable)
};

// Largest requests + warmup accepted (the event counters stay far from int64 overflow).
constexpr int64_t kMaxRequests = int64_t(1) << 53;

// Validates cfg (throws std::invalid_argument) and runs one replication. `progress`, if not
// null, is updated (relaxed atomic store) with the number of finalised requests, warm-up
// included, every 2^16 events; flagcore::check_cancel() is called at the same interval
// (a few milliseconds), so a CancelScope on the calling thread can stop the run.
ForkJoinResult simulate_forkjoin(const ForkJoinConfig& cfg, int64_t* progress = nullptr);

// Replications 0..replications-1 (streams cfg.stream + r) on up to `threads` threads
// (0: flagcore::num_threads()); progress[r] as above if progress is not null.
std::vector<ForkJoinResult> simulate_forkjoin_replications(const ForkJoinConfig& cfg, int replications,
                                                           int threads, int64_t* progress = nullptr);

// The same event loop fed with given arrival times (non-decreasing, `requests` of them) and
// service times (services[r * n + j]: request r's task on server j, in time units; one level
// of rate 1 and power 1). Outputs per request: departure time, busy time of its tasks and the
// part of it that was wasted (cancelled or late). For the path-wise tests.
void simulate_forkjoin_trace(int n, int k, bool cancel, int64_t requests,
                             const double* arrivals,  // [requests]
                             const double* services,  // [requests, n]
                             double* departures,      // [requests]
                             double* busy,            // [requests]
                             double* wasted);         // [requests]

// Helpers for tests, compiled here with the simulator's floating-point flags: count unit-mean
// service samples from stream (seed, stream); det_log / det_exp over an array.
void sample_service_cpu(ServiceKind kind, double param, const double* table, uint64_t table_size,
                        uint64_t seed, uint64_t stream, int64_t count, double* out);
void det_log_cpu(const double* x, int64_t count, double* out);
void det_exp_cpu(const double* x, int64_t count, double* out);

}  // namespace sim
}  // namespace flagcore
