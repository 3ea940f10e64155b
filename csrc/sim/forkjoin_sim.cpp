#include "sim/forkjoin_sim.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#if defined(__unix__) || defined(__APPLE__)
#include <time.h>
#define FLAGCORE_THREAD_CPUTIME 1
#endif

#include "common/check.hpp"
#include "common/parallel.hpp"
#include "sim/histogram.hpp"

namespace flagcore {
namespace sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Where arrivals, work amounts and levels come from: the seeded generator...
struct RandomSource {
  Rng rng;
  double inv_rate;
  ServiceSampler service;
  std::vector<double> cum;  // cumulative level probabilities, last one forced to 1
  int m;

  double next_arrival(int64_t /*r*/, double now) { return now + sample_exponential(rng) * inv_rate; }
  double work(int64_t /*r*/, int /*j*/) { return service(rng); }
  int level() {
    if (m == 1) return 0;
    const double u = rng.uniform();
    int s = 0;
    while (s < m - 1 && u >= cum[s]) ++s;
    return s;
  }
};

// ...or given arrays (the path-wise oracle tests).
struct TraceSource {
  const double* arrivals;
  const double* services;
  int64_t requests;
  int n;
  double next_arrival(int64_t r, double /*now*/) { return r < requests ? arrivals[r] : kInf; }
  double work(int64_t r, int j) { return services[r * n + j]; }
  int level() { return 0; }
};

struct Request {
  double arrival, departure, energy, busy, wasted_time, wasted_energy;
  int32_t done, ended;  // completed tasks; tasks finished or cancelled
};

struct TraceOut {
  double* departures = nullptr;
  double* busy = nullptr;
  double* wasted = nullptr;
};

template <class Source>
class Engine {
 public:
  Engine(const ForkJoinConfig& cfg, Source& src, ForkJoinResult& res, int64_t* progress,
         TraceOut trace)
      : n_(cfg.n), k_(cfg.k), m_(int(cfg.rates.size())), cancel_(cfg.cancel),
        redraw_(cfg.redraw_on_arrival), rates_(cfg.rates), powers_(cfg.powers),
        w0_(cfg.warmup), w1_(cfg.warmup + cfg.requests), requests_(cfg.requests),
        batches_(cfg.batches), max_in_system_(cfg.max_in_system), src_(src), res_(res),
        progress_(progress), trace_(trace), trace_mode_(trace.departures != nullptr) {
    const int slots = n_ + 1;
    use_tree_ = slots > 16;
    leaves_ = 1;
    while (leaves_ < slots) leaves_ *= 2;
    ev_time_.assign(size_t(leaves_), kInf);
    ev_seq_.assign(size_t(leaves_), std::numeric_limits<uint64_t>::max());
    if (use_tree_) {
      tree_.assign(size_t(2 * leaves_), 0);
      for (int i = 0; i < leaves_; ++i) tree_[size_t(leaves_ + i)] = i;
      for (int i = leaves_ - 1; i >= 1; --i) tree_[size_t(i)] = better(tree_[size_t(2 * i)], tree_[size_t(2 * i + 1)]);
    }
    cur_.assign(size_t(n_), 0);
    level_.assign(size_t(n_), 0);
    seg_start_.assign(size_t(n_), 0.0);
    work_left_.assign(size_t(n_), 0.0);
    task_busy_.assign(size_t(n_), 0.0);
    task_energy_.assign(size_t(n_), 0.0);
    ring_.resize(1024);
    mask_ = int64_t(ring_.size()) - 1;
    res_.busy_time.assign(size_t(m_), 0.0);
    res_.completions.assign(size_t(m_), 0.0);
    if (!trace_mode_) {
      res_.batch.assign(size_t(batches_) * ForkJoinResult::kBatchFields, 0.0);
      res_.batch_hist.assign(size_t(batches_) * LogHistogramLayout::kBuckets, 0u);
    }
    if (redraw_)
      for (int j = 0; j < n_; ++j) level_[size_t(j)] = src_.level();
  }

  void run() {
    schedule(n_, src_.next_arrival(0, 0.0));
    for (;;) {
      const int slot = next_slot();
      const double t = ev_time_[size_t(slot)];
      if (t == kInf) break;  // trace exhausted
      if (slot == n_) {
        on_arrival(t);
        if (res_.aborted) break;
      } else {
        on_completion(slot, t);
      }
      if (fin_ >= w1_ && (window_ == 2 || trace_mode_)) break;
    }
    if (progress_) __atomic_store_n(progress_, fin_, __ATOMIC_RELAXED);
  }

 private:
  // ------------------------------------------------------------ event slots
  bool before(int a, int b) const {
    const double ta = ev_time_[size_t(a)], tb = ev_time_[size_t(b)];
    return ta < tb || (ta == tb && ev_seq_[size_t(a)] < ev_seq_[size_t(b)]);
  }
  int better(int a, int b) const { return before(b, a) ? b : a; }
  void schedule(int slot, double t) {
    ev_time_[size_t(slot)] = t;
    ev_seq_[size_t(slot)] = ++seq_;
    if (use_tree_) {
      for (int i = (leaves_ + slot) >> 1; i >= 1; i >>= 1)
        tree_[size_t(i)] = better(tree_[size_t(2 * i)], tree_[size_t(2 * i + 1)]);
    }
  }
  int next_slot() const {
    if (use_tree_) return tree_[1];
    // branch-free scan: the comparisons of random times would mispredict half the time
    const double* tm = ev_time_.data();
    const uint64_t* sq = ev_seq_.data();
    int best = 0;
    double bt = tm[0];
    uint64_t bs = sq[0];
    for (int i = 1; i <= n_; ++i) {
      const double t = tm[i];
      const uint64_t s = sq[i];
      const bool lt = (t < bt) | ((t == bt) & (s < bs));
      bt = lt ? t : bt;
      bs = lt ? s : bs;
      best = lt ? i : best;
    }
    return best;
  }

  // ------------------------------------------------------------ requests
  Request& req(int64_t r) { return ring_[size_t(r & mask_)]; }
  void grow_ring() {
    std::vector<Request> bigger(ring_.size() * 2);
    const int64_t bmask = int64_t(bigger.size()) - 1;
    for (int64_t r = fin_; r < tail_; ++r) bigger[size_t(r & bmask)] = ring_[size_t(r & mask_)];
    ring_.swap(bigger);
    mask_ = bmask;
  }
  int64_t batch_of(int64_t r) const { return (r - w0_) * batches_ / requests_; }
  double* batch_row(int64_t b) { return &res_.batch[size_t(b) * ForkJoinResult::kBatchFields]; }

  void integrate(double t) {
    if (window_ != 1) return;
    const double dt = t - last_t_;
    const double area = double(tail_ - head_) * dt;
    res_.integral_in_system += area;
    double* row = batch_row(tb_);
    row[4] += area;
    row[5] += dt;
    last_t_ = t;
  }

  // ------------------------------------------------------------ servers
  void close_segment(int j, double t) {
    const double s = seg_start_[size_t(j)];
    const int lev = level_[size_t(j)];
    const double d = t - s, p = powers_[size_t(lev)];
    task_busy_[size_t(j)] += d;
    task_energy_[size_t(j)] += p * d;
    if (window_ != 0) {
      const double lo = std::max(s, res_.t_start);
      const double hi = window_ == 2 ? std::min(t, res_.t_end) : t;
      if (hi > lo) {
        res_.busy_time[size_t(lev)] += hi - lo;
        res_.dynamic_energy_window += p * (hi - lo);
        if (window_ == 1) {
          double* row = batch_row(tb_);
          row[6] += p * (hi - lo);
          row[7] += hi - lo;
        }
      }
    }
    seg_start_[size_t(j)] = t;
  }
  void start_task(int j, int64_t r, double t) {
    if (!redraw_) level_[size_t(j)] = src_.level();
    const double w = src_.work(r, j);
    seg_start_[size_t(j)] = t;
    task_busy_[size_t(j)] = 0.0;
    task_energy_[size_t(j)] = 0.0;
    if (redraw_) work_left_[size_t(j)] = w;
    schedule(j, t + w / rates_[size_t(level_[size_t(j)])]);
  }
  void end_task(int j, Request& q, bool wasted) {
    q.energy += task_energy_[size_t(j)];
    q.busy += task_busy_[size_t(j)];
    if (wasted) {
      q.wasted_time += task_busy_[size_t(j)];
      q.wasted_energy += task_energy_[size_t(j)];
    }
    ++q.ended;
  }
  void advance(int j, int64_t r, double t) {
    cur_[size_t(j)] = r + 1;
    if (r + 1 < tail_) start_task(j, r + 1, t);
    else schedule(j, kInf);
  }

  // ------------------------------------------------------------ events
  void on_arrival(double t) {
    integrate(t);
    const int64_t r = tail_;
    if (!trace_mode_) {
      if (r == w0_) {
        window_ = 1;
        res_.t_start = t;
        last_t_ = t;
        tb_ = 0;
      } else if (r == w1_) {
        batch_row(tb_)[8] = double(tail_ - head_);
        window_ = 2;
        res_.t_end = t;
      } else if (window_ == 1) {
        const int64_t b = batch_of(r);
        if (b != tb_) {
          batch_row(tb_)[8] = double(tail_ - head_);
          tb_ = b;
        }
      }
    }
    if (tail_ - fin_ == int64_t(ring_.size())) grow_ring();
    Request& q = req(r);
    q = Request{t, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0};
    ++tail_;
    ++res_.arrivals;
    ++res_.events;
    const int64_t in_system = tail_ - head_;
    if (in_system > res_.max_in_system_seen) res_.max_in_system_seen = in_system;
    if (in_system > max_in_system_) {
      res_.aborted = true;
      return;
    }
    if (redraw_) {
      for (int j = 0; j < n_; ++j) {
        const int lev_old = level_[size_t(j)];
        const int lev = src_.level();
        if (cur_[size_t(j)] < r) {  // busy: the task keeps its remaining work
          double left = work_left_[size_t(j)] - (t - seg_start_[size_t(j)]) * rates_[size_t(lev_old)];
          work_left_[size_t(j)] = left > 0.0 ? left : 0.0;
          close_segment(j, t);
          level_[size_t(j)] = lev;
          schedule(j, t + work_left_[size_t(j)] / rates_[size_t(lev)]);
        } else {
          level_[size_t(j)] = lev;
        }
      }
    }
    for (int j = 0; j < n_; ++j)
      if (cur_[size_t(j)] == r) start_task(j, r, t);
    schedule(n_, src_.next_arrival(r + 1, t));
  }

  void on_completion(int j, double t) {
    integrate(t);
    const int64_t r = cur_[size_t(j)];
    close_segment(j, t);
    if (window_ == 1) res_.completions[size_t(level_[size_t(j)])] += 1.0;
    Request& q = req(r);
    ++q.done;
    ++res_.events;
    const bool late = r < head_;  // only without cancellation
    end_task(j, q, late);
    advance(j, r, t);
    if (!late && q.done == k_) depart(r, t);
    else if (late && q.ended == n_) finalize(r);
  }

  void depart(int64_t r, double t) {
    FLAGCORE_CHECK_STATE(r == head_, "fork-join: request " << r << " departed before request " << head_);
    ++head_;
    Request& q = req(r);
    q.departure = t;
    if (cancel_) {
      for (int i = 0; i < n_; ++i) {
        if (cur_[size_t(i)] != r) continue;
        close_segment(i, t);
        end_task(i, q, true);
        ++res_.events;
        advance(i, r, t);
      }
    }
    if (q.ended == n_) finalize(r);
  }

  void finalize(int64_t r) {
    FLAGCORE_CHECK_STATE(r == fin_, "fork-join: request " << r << " finalised before request " << fin_);
    ++fin_;
    const Request& q = req(r);
    if (trace_mode_) {
      trace_.departures[r] = q.departure;
      trace_.busy[r] = q.busy;
      trace_.wasted[r] = q.wasted_time;
      return;
    }
    if (progress_ && (fin_ & 8191) == 0) __atomic_store_n(progress_, fin_, __ATOMIC_RELAXED);
    if (r < w0_ || r >= w1_) return;
    const double T = q.departure - q.arrival;
    if (res_.measured == 0) {
      res_.min_response = res_.max_response = T;
    } else {
      res_.min_response = std::min(res_.min_response, T);
      res_.max_response = std::max(res_.max_response, T);
    }
    ++res_.measured;
    res_.sum_response += T;
    res_.sum_energy += q.energy;
    res_.sum_wasted_time += q.wasted_time;
    res_.sum_wasted_energy += q.wasted_energy;
    const int64_t b = batch_of(r);
    double* row = batch_row(b);
    row[0] += 1.0;
    row[1] += T;
    row[2] += q.energy;
    row[3] += q.wasted_time;
    ++res_.batch_hist[size_t(b) * LogHistogramLayout::kBuckets + size_t(LogHistogramLayout::index(T))];
  }

  const int n_, k_, m_;
  const bool cancel_, redraw_;
  const std::vector<double> rates_, powers_;
  const int64_t w0_, w1_, requests_, batches_, max_in_system_;
  Source& src_;
  ForkJoinResult& res_;
  int64_t* progress_;
  TraceOut trace_;
  const bool trace_mode_;

  std::vector<double> ev_time_;
  std::vector<uint64_t> ev_seq_;
  std::vector<int> tree_;
  int leaves_ = 1;
  bool use_tree_ = false;
  uint64_t seq_ = 0;

  std::vector<int64_t> cur_;
  std::vector<int> level_;
  std::vector<double> seg_start_, work_left_, task_busy_, task_energy_;

  std::vector<Request> ring_;
  int64_t mask_ = 0;
  int64_t tail_ = 0, head_ = 0, fin_ = 0;  // next to arrive, to depart, to finalise

  int window_ = 0;  // 0 warm-up, 1 measuring, 2 past the measured arrivals
  int64_t tb_ = 0;  // batch of the time window
  double last_t_ = 0.0;
};

// CPU seconds of the calling thread: speed measurements that other processes on a shared
// machine do not distort (wall time is reported beside it).
double thread_cpu_seconds() {
#ifdef FLAGCORE_THREAD_CPUTIME
  timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
#endif
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void validate(const ForkJoinConfig& c) {
  FLAGCORE_CHECK_ARG(c.n >= 1, "simulate: n must be >= 1, got " << c.n);
  FLAGCORE_CHECK_ARG(c.k >= 1 && c.k <= c.n, "simulate: k must be in [1, n=" << c.n << "], got " << c.k);
  FLAGCORE_CHECK_ARG(c.arrival_rate > 0 && std::isfinite(c.arrival_rate),
                     "simulate: arrival_rate must be positive and finite, got " << c.arrival_rate);
  const size_t m = c.rates.size();
  FLAGCORE_CHECK_ARG(m >= 1 && c.powers.size() == m && c.probs.size() == m,
                     "simulate: rates, powers and probs must have one entry per level");
  double sum = 0.0;
  for (size_t s = 0; s < m; ++s) {
    FLAGCORE_CHECK_ARG(c.rates[s] > 0 && std::isfinite(c.rates[s]), "simulate: rates must be positive, got " << c.rates[s]);
    FLAGCORE_CHECK_ARG(c.powers[s] >= 0 && std::isfinite(c.powers[s]), "simulate: powers must be >= 0, got " << c.powers[s]);
    FLAGCORE_CHECK_ARG(c.probs[s] >= 0 && c.probs[s] <= 1, "simulate: probs must be in [0, 1], got " << c.probs[s]);
    sum += c.probs[s];
  }
  FLAGCORE_CHECK_ARG(std::fabs(sum - 1.0) <= 1e-9, "simulate: probs must sum to 1, got " << sum);
  FLAGCORE_CHECK_ARG(c.idle_power >= 0 && std::isfinite(c.idle_power), "simulate: idle_power must be >= 0");
  FLAGCORE_CHECK_ARG(c.batches >= 1 && c.requests >= c.batches,
                     "simulate: requests (" << c.requests << ") must be >= batches (" << c.batches << ")");
  FLAGCORE_CHECK_ARG(c.warmup >= 0, "simulate: warmup must be >= 0, got " << c.warmup);
  FLAGCORE_CHECK_ARG(c.requests / c.batches < (int64_t(1) << 32), "simulate: too many requests per batch");
  FLAGCORE_CHECK_ARG(c.max_in_system >= 1, "simulate: max_in_system must be >= 1");
  switch (c.service) {
    case ServiceKind::exponential:
    case ServiceKind::deterministic: break;
    case ServiceKind::gamma:
    case ServiceKind::lognormal:
      FLAGCORE_CHECK_ARG(c.service_param > 0 && std::isfinite(c.service_param), "simulate: service parameter must be positive");
      break;
    case ServiceKind::pareto:
      FLAGCORE_CHECK_ARG(c.service_param > 1 && std::isfinite(c.service_param), "simulate: Pareto alpha must be > 1");
      break;
    case ServiceKind::empirical:
      FLAGCORE_CHECK_ARG(!c.empirical.empty(), "simulate: empirical service needs at least one value");
      break;
    default: FLAGCORE_CHECK_ARG(false, "simulate: unknown service kind " << int(c.service));
  }
}

}  // namespace

ForkJoinResult simulate_forkjoin(const ForkJoinConfig& cfg, int64_t* progress) {
  validate(cfg);
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = thread_cpu_seconds();
  RandomSource src{Rng(cfg.seed, cfg.stream), 1.0 / cfg.arrival_rate, ServiceSampler{}, {}, int(cfg.rates.size())};
  src.service.kind = cfg.service;
  src.service.param = cfg.service_param;
  src.service.table = cfg.empirical.data();
  src.service.table_size = cfg.empirical.size();
  double acc = 0.0;
  for (size_t s = 0; s < cfg.probs.size(); ++s) {
    acc += cfg.probs[s];
    src.cum.push_back(s + 1 == cfg.probs.size() ? 2.0 : acc);  // u < 1 always lands somewhere
  }
  ForkJoinResult res;
  Engine<RandomSource> engine(cfg, src, res, progress, TraceOut{});
  engine.run();
  res.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.cpu_seconds = thread_cpu_seconds() - c0;
  return res;
}

std::vector<ForkJoinResult> simulate_forkjoin_replications(const ForkJoinConfig& cfg, int replications,
                                                           int threads, int64_t* progress) {
  FLAGCORE_CHECK_ARG(replications >= 1, "simulate: replications must be >= 1, got " << replications);
  validate(cfg);
  std::vector<ForkJoinResult> out(static_cast<size_t>(replications));
  parallel_for(size_t(replications), [&](size_t r) {
    ForkJoinConfig c = cfg;
    c.stream = cfg.stream + r;
    out[r] = simulate_forkjoin(c, progress ? progress + r : nullptr);
  }, threads);
  return out;
}

void simulate_forkjoin_trace(int n, int k, bool cancel, int64_t requests, const double* arrivals,
                             const double* services, double* departures, double* busy, double* wasted) {
  FLAGCORE_CHECK_ARG(n >= 1 && k >= 1 && k <= n, "simulate_trace: need 1 <= k <= n, got n=" << n << ", k=" << k);
  FLAGCORE_CHECK_ARG(requests >= 1, "simulate_trace: need at least one request");
  for (int64_t r = 0; r < requests; ++r) {
    FLAGCORE_CHECK_ARG(std::isfinite(arrivals[r]) && arrivals[r] >= 0 && (r == 0 || arrivals[r] >= arrivals[r - 1]),
                       "simulate_trace: arrivals must be finite, >= 0 and non-decreasing (index " << r << ")");
  }
  for (int64_t i = 0; i < requests * n; ++i)
    FLAGCORE_CHECK_ARG(std::isfinite(services[i]) && services[i] >= 0,
                       "simulate_trace: services must be finite and >= 0 (flat index " << i << ")");
  ForkJoinConfig cfg;
  cfg.n = n;
  cfg.k = k;
  cfg.cancel = cancel;
  cfg.requests = requests;
  cfg.warmup = 0;
  cfg.batches = 1;
  cfg.max_in_system = std::numeric_limits<int64_t>::max();
  TraceSource src{arrivals, services, requests, n};
  ForkJoinResult res;
  Engine<TraceSource> engine(cfg, src, res, nullptr, TraceOut{departures, busy, wasted});
  engine.run();
  FLAGCORE_CHECK_STATE(res.arrivals == requests, "simulate_trace: not every request arrived");
}

void sample_service_cpu(ServiceKind kind, double param, const double* table, uint64_t table_size,
                        uint64_t seed, uint64_t stream, int64_t count, double* out) {
  Rng rng(seed, stream);
  const ServiceSampler sampler{kind, param, table, table_size};
  for (int64_t i = 0; i < count; ++i) out[i] = sampler(rng);
}

void det_log_cpu(const double* x, int64_t count, double* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = det_log(x[i]);
}

void det_exp_cpu(const double* x, int64_t count, double* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = det_exp(x[i]);
}

}  // namespace sim
}  // namespace flagcore
