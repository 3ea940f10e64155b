#include "sim/forkjoin_sim.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#if defined(__unix__) || defined(__APPLE__)
#include <time.h>
#define FLAGCORE_THREAD_CPUTIME 1
#endif

#include "common/cancel.hpp"
#include "common/check.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "sim/histogram.hpp"

namespace flagcore {
namespace sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kMaxScan = 16;  // most event slots (servers + 1) searched linearly
#if defined(__GNUC__)
#define FLAGCORE_SIM_INLINE __attribute__((always_inline)) inline
#else
#define FLAGCORE_SIM_INLINE inline
#endif

// Where arrivals, work amounts and levels come from: the seeded generator...
struct RandomSource {
  Rng rng;
  double inv_rate = 1.0;
  ServiceSampler service{};
  std::vector<double> cum{};  // cumulative level probabilities, last one forced to 1
  int m = 1;
  // MMPP arrivals (empty: Poisson): per phase the arrival rate, the total rate of events
  // (arrivals + phase changes) and the cumulative probabilities of the next phase on a change
  std::vector<double> ph_rate{}, ph_total{}, ph_cum{};  // ph_cum: [phases][phases]
  int phases = 0, phase = 0;

  // renewal arrivals: unit-mean inter-arrival times from this sampler, scaled by 1 / rate
  ServiceSampler interarrival{};
  // trace replay: given arrival times and (optional) task work amounts [requests][n]
  const double* tr_arrivals = nullptr;
  int64_t tr_count = 0;
  const double* tr_sizes = nullptr;
  int n = 1;
  int mode = 0;  // 0 Poisson, 1 renewal, 2 MMPP, 3 trace: one test on the Poisson path

  double next_arrival(int64_t r, double now) {
    if (mode == 0) return now + sample_exponential(rng) * inv_rate;
    if (mode == 1) return now + interarrival(rng) * inv_rate;
    if (mode == 3) return r < tr_count ? tr_arrivals[r] : kInf;
    double t = now;
    for (;;) {  // competing exponentials: an arrival, or a change of phase
      const double tot = ph_total[size_t(phase)];
      t += sample_exponential(rng) / tot;
      if (rng.uniform() * tot < ph_rate[size_t(phase)]) return t;
      const double u = rng.uniform();
      const double* c = &ph_cum[size_t(phase) * size_t(phases)];
      int next = 0;
      while (next < phases - 1 && u >= c[next]) ++next;
      phase = next;
    }
  }
  double work(int64_t r, int j) {
    if (tr_sizes != nullptr) return tr_sizes[r * n + j];
    return service(rng);
  }
  Rng& rng_ref() { return rng; }
  // per-server level sets (null: one set shared by every server): server j's levels are the
  // global indices off[j] .. off[j] + cnt[j] - 1, with cumulative probabilities in cum
  const int* off = nullptr;
  const int* cnt = nullptr;
  int level(int j) {
    if (off == nullptr) {
      if (m == 1) return 0;
      const double u = rng.uniform();
      int s = 0;
      while (s < m - 1 && u >= cum[s]) ++s;
      return s;
    }
    const int o = off[j], c = cnt[j];
    if (c == 1) return o;
    const double u = rng.uniform();
    int s = 0;
    while (s < c - 1 && u >= cum[size_t(o + s)]) ++s;
    return o + s;
  }
};

// ...or, for the common model (Poisson arrivals, exponential work, one speed level shared by
// every server), the same draws in the same order without RandomSource's per-draw tests.
struct PlainSource {
  Rng rng;
  double inv_rate;
  const ExpZiggurat* zig;  // not ExpZiggurat::get() per draw: that tests a guard variable
  double next_arrival(int64_t /*r*/, double now) { return now + sample_exponential(rng, *zig) * inv_rate; }
  double work(int64_t /*r*/, int /*j*/) { return sample_exponential(rng, *zig); }
  int level(int /*j*/) { return 0; }
  Rng& rng_ref() { return rng; }
};

// ...or given arrays (the path-wise oracle tests).
struct TraceSource {
  const double* arrivals;
  const double* services;
  int64_t requests;
  int n;
  double next_arrival(int64_t r, double /*now*/) { return r < requests ? arrivals[r] : kInf; }
  double work(int64_t r, int j) { return services[r * n + j]; }
  int level(int /*j*/) { return 0; }
  Rng rng{0, 0};  // unused: the trace replay has no sleep states
  Rng& rng_ref() { return rng; }
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

// kSleep / kRedraw: sleep states configured / levels redrawn at arrivals; kPolicy: the
// SpeedPolicy; kStall: switch_time > 0. Compile-time, so that a run without them pays nothing
// for them. kTree: the event slots in a tournament tree (1), scanned (0), or chosen at run time
// by the number of slots (-1).
template <class Source, bool kSleep, bool kRedraw, int kPolicy, bool kStall, int kTree = -1>
class Engine {
  // a task's level may change while it runs (its remaining work is then tracked)
  static constexpr bool kMid = kRedraw || kPolicy == int(SpeedPolicy::threshold);

 public:
  Engine(const ForkJoinConfig& cfg, Source& src, ForkJoinResult& res, int64_t* progress, TraceOut trace)
      : n_(cfg.n),
        k_(cfg.k),
        m_(cfg.server_levels.empty() ? int(cfg.rates.size())
                                     : *std::max_element(cfg.server_levels.begin(), cfg.server_levels.end())),
        L_(int(cfg.rates.size())),
        S_(int(cfg.sleep_states.size())),
        cancel_(cfg.cancel),
        sleep_exp_(cfg.sleep_exponential),
        wake_exp_(cfg.wake_exponential),
        rates_(cfg.rates),
        powers_(cfg.powers),
        states_(cfg.sleep_states),
        switch_energy_(cfg.switch_energy),
        switch_time_(cfg.switch_time),
        switch_power_(cfg.switch_power),
        thresholds_(cfg.thresholds),
        deadline_(cfg.deadline),
        known_size_(cfg.deadline_known_size),
        replay_(!cfg.trace_arrivals.empty()),
        w0_(cfg.warmup),
        w1_(cfg.warmup + cfg.requests),
        requests_(cfg.requests),
        batches_(cfg.batches),
        max_in_system_(cfg.max_in_system),
        src_(src),
        res_(res),
        progress_(progress),
        trace_(trace),
        trace_mode_(trace.departures != nullptr) {
    const int slots = n_ + 1;
    use_tree_ = kTree >= 0 ? kTree == 1 : slots > kMaxScan;
    leaves_ = 1;
    while (leaves_ < slots) leaves_ *= 2;
    ev_time_.assign(size_t(leaves_), kInf);
    ev_seq_.assign(size_t(leaves_), std::numeric_limits<uint64_t>::max());
    if (use_tree_) {
      dirty_.assign(size_t(slots), 0);
      dirty_flag_.assign(size_t(slots), 0);
      for (depth_ = 0; (1 << depth_) < leaves_; ++depth_) {
      }
      tree_.assign(size_t(2 * leaves_), 0);
      for (int i = 0; i < leaves_; ++i) tree_[size_t(leaves_ + i)] = i;
      for (int i = leaves_ - 1; i >= 1; --i)
        tree_[size_t(i)] = better(tree_[size_t(2 * i)], tree_[size_t(2 * i + 1)]);
    }
    cur_.assign(size_t(n_), 0);
    level_.assign(size_t(n_), 0);
    seg_start_.assign(size_t(n_), 0.0);
    work_left_.assign(size_t(n_), 0.0);
    task_busy_.assign(size_t(n_), 0.0);
    task_energy_.assign(size_t(n_), 0.0);
    task_win_e_.assign(size_t(n_) * size_t(kMid ? m_ : 1), 0.0);
    avail_.assign(size_t(n_), 0.0);
    off_.assign(size_t(n_), 0);
    cnt_.assign(size_t(n_), L_);
    if (!cfg.server_levels.empty()) {
      int o = 0;
      for (int j = 0; j < n_; ++j) {
        off_[size_t(j)] = o;
        cnt_[size_t(j)] = cfg.server_levels[size_t(j)];
        o += cnt_[size_t(j)];
        level_[size_t(j)] = off_[size_t(j)];
      }
    }
    // each server's levels by ascending rate, ties by index (deadline policy)
    order_.resize(size_t(L_));
    for (int g = 0; g < L_; ++g) order_[size_t(g)] = g;
    for (int j = 0; j < (cfg.server_levels.empty() ? 1 : n_); ++j)
      std::stable_sort(order_.begin() + off_[size_t(j)], order_.begin() + off_[size_t(j)] + cnt_[size_t(j)],
                       [this](int a, int b) { return rates_[size_t(a)] < rates_[size_t(b)]; });
    ring_.resize(1024);
    mask_ = int64_t(ring_.size()) - 1;
    res_.busy_time.assign(size_t(L_), 0.0);
    res_.busy_energy.assign(size_t(L_), 0.0);
    res_.wasted_busy_energy.assign(size_t(L_), 0.0);
    res_.completions.assign(size_t(L_), 0.0);
    res_.sleep_time.assign(size_t(S_), 0.0);
    res_.sleep_energy.assign(size_t(S_), 0.0);
    if (!trace_mode_) {
      res_.batch.assign(size_t(batches_), BatchRow{});
      hist_.assign(size_t(LogHistogramLayout::kBuckets), 0u);
    }
    if constexpr (kSleep) {
      waking_.assign(size_t(n_), 0);
      wake_state_.assign(size_t(n_), 0);
      wake_start_.assign(size_t(n_), 0.0);
      idle_since_.assign(size_t(n_), 0.0);
      idle_acct_.assign(size_t(n_), 0.0);
      enter_.assign(size_t(n_) * size_t(S_ + 1), kInf);
      for (int j = 0; j < n_; ++j) go_idle(j, 0.0);
    }
    if constexpr (kRedraw)
      for (int j = 0; j < n_; ++j) level_[size_t(j)] = src_.level(j);
    tb_next_ = fb_next_ = batch_start(1);
    if (!trace_mode_) frow_ = &batch_row(0);
  }

  void run() {
    schedule(n_, src_.next_arrival(0, 0.0));
    int64_t countdown = kCheckInterval;
    for (;;) {
      double t;
      const int slot = next_slot(t);
      if (t == kInf) break;  // trace exhausted
      if (slot == n_) {
        on_arrival(t);
        if (res_.aborted) break;
      } else if (sleep_ && waking_[size_t(slot)]) {
        on_wake_done(slot, t);
      } else {
        on_completion(slot, t);
      }
      if (fin_ >= w1_) {
        if (window_ == 2 || trace_mode_) break;
        if (replay_) {  // the trace is over and the system has emptied: the window closes
          close_window(t);
          break;
        }
      }
      if (--countdown == 0) {
        countdown = kCheckInterval;
        if (progress_) __atomic_store_n(progress_, fin_, __ATOMIC_RELAXED);
        check_cancel();
      }
    }
    if (!trace_mode_) flush_hist();
    if (progress_) __atomic_store_n(progress_, fin_, __ATOMIC_RELAXED);
  }

 private:
  static constexpr int64_t kCheckInterval = int64_t(1) << 16;

  // ------------------------------------------------------------ event slots
  bool before(int a, int b) const {
    const double ta = ev_time_[size_t(a)], tb = ev_time_[size_t(b)];
    return ta < tb || (ta == tb && ev_seq_[size_t(a)] < ev_seq_[size_t(b)]);
  }
  int better(int a, int b) const { return before(b, a) ? b : a; }
  void schedule(int slot, double t) {
    ev_time_[size_t(slot)] = t;
    ev_seq_[size_t(slot)] = ++seq_;
    if (tree() && !dirty_flag_[size_t(slot)]) {  // the tree is brought up to date lazily
      dirty_flag_[size_t(slot)] = 1;
      dirty_[size_t(n_dirty_++)] = slot;
    }
  }
  // Brings the tournament tree up to date with the slots scheduled since the last call: path by
  // path when few changed, else one bottom-up rebuild (an arrival or a departure reschedules
  // many servers at once). The winner is the unique minimum of (time, sequence), so the order
  // of the updates does not matter: a node is last recomputed on the last dirty path through
  // it, after every dirty leaf below it.
  void update_tree() {
    if (n_dirty_ == 0) return;
    if (n_dirty_ * depth_ >= leaves_) {
      for (int i = leaves_ - 1; i >= 1; --i)
        tree_[size_t(i)] = better(tree_[size_t(2 * i)], tree_[size_t(2 * i + 1)]);
    } else {
      for (int d = 0; d < n_dirty_; ++d)
        for (int i = (leaves_ + dirty_[size_t(d)]) >> 1; i >= 1; i >>= 1)
          tree_[size_t(i)] = better(tree_[size_t(2 * i)], tree_[size_t(2 * i + 1)]);
    }
    for (int d = 0; d < n_dirty_; ++d) dirty_flag_[size_t(dirty_[size_t(d)])] = 0;
    n_dirty_ = 0;
  }
  bool tree() const {
    if constexpr (kTree >= 0)
      return kTree == 1;
    else
      return use_tree_;
  }
  // The next event's slot, and its time in t.
  int next_slot(double& t_out) {
    if (tree()) {
      update_tree();
      t_out = ev_time_[size_t(tree_[1])];
      return tree_[1];
    }
    // The earliest time by a scan whose branches the CPU predicts (a branch-free minimum was
    // slower: it makes every event wait for the whole comparison chain). The sequence numbers
    // decide only between equal times (deterministic work, equal trace times, tiny work);
    // +inf slots are idle and all-idle ends the run, whichever slot is returned.
    const double* tm = ev_time_.data();
    int first = 0;
    double ft = tm[0];
    bool tie = false;
    for (int i = 1; i <= n_; ++i) {
      const double t = tm[i];
      if (t < ft) {
        ft = t;
        first = i;
        tie = false;
      } else if (t == ft) {
        tie = true;
      }
    }
    t_out = ft;
    if (!tie || ft == kInf) return first;
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
    t_out = bt;  // equal to ft, but -0.0 and +0.0 compare equal
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
  // The first request of batch b: batch_of(r) = floor((r - w0) * batches / requests), so batch
  // b starts at w0 + ceil(b * requests / batches) (128-bit: both factors may be large). The
  // callers see r in increasing order and only cross a boundary `batches` times, so they keep
  // the next boundary instead of dividing per request.
  int64_t batch_start(int64_t b) const {
    if (b >= batches_) return std::numeric_limits<int64_t>::max();
    const __int128 num = __int128(b) * requests_;
    return w0_ + int64_t((num + batches_ - 1) / batches_);
  }
  BatchRow& batch_row(int64_t b) { return res_.batch[size_t(b)]; }
  BatchRow& time_row() { return *trow_; }  // batch_row(tb_), kept as a pointer

  void integrate(double t) {
    if (window_ != 1) return;
    const double dt = t - last_t_;
    const double area = double(tail_ - head_) * dt;
    res_.integral_in_system += area;
    BatchRow& row = time_row();
    row.integral_in_system += area;
    row.duration += dt;
    last_t_ = t;
  }
  // The part of [lo, hi] inside the measurement window (0 outside it).
  double in_window(double& lo, double& hi) const {
    if (window_ == 0) return 0.0;
    lo = std::max(lo, res_.t_start);
    if (window_ == 2) hi = std::min(hi, res_.t_end);
    return hi > lo ? hi - lo : 0.0;
  }

  // ------------------------------------------------------------ servers
  void close_segment(int j, double t) {
    const double s = seg_start_[size_t(j)];
    const int lev = level_[size_t(j)];
    // t < s only when closed during a switch stall, before the task's work began
    const double d = kStall ? (t > s ? t - s : 0.0) : t - s;
    const double p = powers_[size_t(lev)];
    task_busy_[size_t(j)] += d;
    task_energy_[size_t(j)] += p * d;
    double lo = s, hi = t;
    const double w = in_window(lo, hi);
    if (w > 0.0) {
      res_.busy_time[size_t(lev)] += w;
      res_.busy_energy[size_t(lev)] += p * w;
      res_.dynamic_energy_window += p * w;
      task_win_e_[kMid ? size_t(j) * size_t(m_) + size_t(lev - off_[size_t(j)]) : size_t(j)] += p * w;
      if (window_ == 1) {
        BatchRow& row = time_row();
        row.dynamic_energy += p * w;
        row.busy_time += w;
      }
    }
    seg_start_[size_t(j)] = t;
  }
  void count_switch() {
    if (window_ != 1) return;
    ++res_.switches;
    time_row().other_energy += switch_energy_;
  }
  // A stall of switch_time for server j from `from` (a change of level); returns its end.
  double stall(int j, double from) {
    const double to = from + switch_time_;
    double lo = from, hi = to;
    const double w = in_window(lo, hi);
    if (w > 0.0) {
      res_.stall_time += w;
      res_.stall_energy += switch_power_ * w;
      if (window_ == 1) {
        BatchRow& row = time_row();
        row.other_energy += switch_power_ * w;
        row.other_time += w;
      }
    }
    avail_[size_t(j)] = to;
    return to;
  }
  // threshold policy: the level for a queue of q tasks
  int threshold_level(int j, int64_t q) const {
    int s = 0;
    while (s < m_ - 1 && q > thresholds_[size_t(s)]) ++s;
    return off_[size_t(j)] + s;
  }
  // deadline policy: the slowest level whose expected finish meets request r's deadline
  int deadline_level(int j, int64_t r, double t, double w) {
    const double due = req(r).arrival + deadline_;
    const double x = known_size_ ? w : 1.0;
    const double base = avail_[size_t(j)] > t ? avail_[size_t(j)] : t;
    const int o = off_[size_t(j)], c = cnt_[size_t(j)];
    for (int i = o; i < o + c; ++i) {
      const int s = order_[size_t(i)];
      const double b = s != level_[size_t(j)] ? base + switch_time_ : base;
      if (b + x / rates_[size_t(s)] <= due) return s;
    }
    return order_[size_t(o + c - 1)];
  }
  void start_task(int j, int64_t r, double t) {
    double w;
    double begin = t;
    if constexpr (kStall) {
      if (avail_[size_t(j)] > t) begin = avail_[size_t(j)];  // a stall runs on
    }
    if constexpr (!kRedraw) {
      int lev;
      if constexpr (kPolicy == int(SpeedPolicy::random)) {
        lev = src_.level(j);
        w = src_.work(r, j);
      } else if constexpr (kPolicy == int(SpeedPolicy::threshold)) {
        w = src_.work(r, j);
        lev = threshold_level(j, tail_ - r);
      } else {
        w = src_.work(r, j);
        lev = deadline_level(j, r, t, w);
      }
      if (m_ > 1 && lev != level_[size_t(j)]) {  // m_: the most levels of a server
        count_switch();
        if constexpr (kStall) begin = stall(j, begin);
      }
      level_[size_t(j)] = lev;
    } else {
      w = src_.work(r, j);
    }
    seg_start_[size_t(j)] = begin;
    task_busy_[size_t(j)] = 0.0;
    task_energy_[size_t(j)] = 0.0;
    clear_win_e(j);
    if constexpr (kMid) work_left_[size_t(j)] = w;
    schedule(j, begin + w / rates_[size_t(level_[size_t(j)])]);
  }
  void clear_win_e(int j) {
    if constexpr (kMid) {
      for (int s = 0; s < m_; ++s) task_win_e_[size_t(j) * size_t(m_) + size_t(s)] = 0.0;
    } else {
      task_win_e_[size_t(j)] = 0.0;
    }
  }
  void end_task(int j, Request& q, bool wasted) {
    q.energy += task_energy_[size_t(j)];
    q.busy += task_busy_[size_t(j)];
    if (wasted) {
      q.wasted_time += task_busy_[size_t(j)];
      q.wasted_energy += task_energy_[size_t(j)];
      if constexpr (kMid) {
        const size_t o = size_t(off_[size_t(j)]);
        for (int s = 0; s < cnt_[size_t(j)]; ++s)
          res_.wasted_busy_energy[o + size_t(s)] += task_win_e_[size_t(j) * size_t(m_) + size_t(s)];
      } else {
        res_.wasted_busy_energy[size_t(level_[size_t(j)])] += task_win_e_[size_t(j)];
      }
    }
    ++q.ended;
  }
  void advance(int j, int64_t r, double t) {
    cur_[size_t(j)] = r + 1;
    if (sleep_ && waking_[size_t(j)]) return;  // the wake-up event stays; it starts the next task
    if (r + 1 < tail_)
      start_task(j, r + 1, t);
    else
      go_idle(j, t);
  }

  // ------------------------------------------------------------ sleep states
  // Server j becomes idle at t: its entry times into the sleep states are fixed now.
  void go_idle(int j, double t) {
    schedule(j, kInf);
    if (!sleep_) return;
    idle_since_[size_t(j)] = t;
    idle_acct_[size_t(j)] = t;
    double* e = &enter_[size_t(j) * size_t(S_ + 1)];
    double at = t;
    for (int i = 0; i < S_; ++i) {
      const double a = states_[size_t(i)].after;
      at += sleep_exp_ ? a * sample_exponential(src_.rng_ref()) : a;
      e[i] = at;
    }
    e[S_] = kInf;
  }
  // Accounts server j's sleep-state time in [idle_acct, t] (the window part) and returns the
  // state it is in at t (-1: plain idle).
  int account_sleep(int j, double t) {
    const double* e = &enter_[size_t(j) * size_t(S_ + 1)];
    const double from = idle_acct_[size_t(j)];
    idle_acct_[size_t(j)] = t;
    int state = -1;
    for (int i = 0; i < S_; ++i) {
      if (e[i] > t) break;
      state = i;
      double lo = std::max(e[i], from), hi = std::min(e[i + 1], t);
      if (!(hi > lo)) continue;
      const double w = in_window(lo, hi);
      if (w > 0.0) {
        const double p = states_[size_t(i)].power;
        res_.sleep_time[size_t(i)] += w;
        res_.sleep_energy[size_t(i)] += p * w;
        if (window_ == 1) {
          BatchRow& row = time_row();
          row.other_energy += p * w;
          row.other_time += w;
        }
      }
    }
    return state;
  }
  // Work reaches idle server j at t: start it, or wake the server first.
  void wake_or_start(int j, int64_t r, double t) {
    if constexpr (kSleep) {
      const int state = account_sleep(j, t);
      if (state >= 0) {
        const SleepState& st = states_[size_t(state)];
        const double lat = wake_exp_ ? st.wake_latency * sample_exponential(src_.rng_ref()) : st.wake_latency;
        waking_[size_t(j)] = 1;
        wake_start_[size_t(j)] = t;
        wake_state_[size_t(j)] = state;
        if (window_ == 1) ++res_.wakeups;
        schedule(j, t + lat);
        return;
      }
    }
    start_task(j, r, t);
  }
  void on_wake_done(int j, double t) {
    waking_[size_t(j)] = 0;
    const double p = states_[size_t(wake_state_[size_t(j)])].wake_power;
    double lo = wake_start_[size_t(j)], hi = t;
    const double w = in_window(lo, hi);
    if (w > 0.0) {
      res_.wake_time += w;
      res_.wake_energy += p * w;
      if (window_ == 1) {
        BatchRow& row = time_row();
        row.other_energy += p * w;
        row.other_time += w;
      }
    }
    const int64_t r = cur_[size_t(j)];
    if (r < tail_)
      start_task(j, r, t);
    else
      go_idle(j, t);
  }
  // Trace replay: the window closes at t, when the system has emptied after the last arrival.
  void close_window(double t) {
    integrate(t);
    time_row().in_system_at_end = double(tail_ - head_);
    if constexpr (kSleep) close_window_sleep(t);
    window_ = 2;
    res_.t_end = t;
  }
  // The window closes at t: account the sleep time of the servers asleep now.
  void close_window_sleep(double t) {
    for (int j = 0; j < n_; ++j)
      if (cur_[size_t(j)] == tail_ && !waking_[size_t(j)]) account_sleep(j, t);
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
        trow_ = &batch_row(0);
        tb_next_ = batch_start(1);
      } else if (r == w1_) {
        time_row().in_system_at_end = double(tail_ - head_);
        if constexpr (kSleep) close_window_sleep(t);
        window_ = 2;
        res_.t_end = t;
      } else if (window_ == 1 && r >= tb_next_) {
        time_row().in_system_at_end = double(tail_ - head_);
        while (r >= tb_next_) tb_next_ = batch_start(++tb_ + 1);
        trow_ = &batch_row(tb_);
      }
    }
    if (tail_ - fin_ > mask_) grow_ring();  // full: mask_ + 1 = ring_.size()
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
    if constexpr (kRedraw) {
      for (int j = 0; j < n_; ++j) {
        const int lev_old = level_[size_t(j)];
        const int lev = src_.level(j);
        if (lev != lev_old) count_switch();
        if (cur_[size_t(j)] < r && !(sleep_ && waking_[size_t(j)])) {
          // busy: the task keeps its remaining work
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
    if constexpr (kPolicy == int(SpeedPolicy::threshold)) {
      // every queue grew by one: a busy server whose level changes continues its task at the
      // new rate with its remaining work (after a stall, if any)
      for (int j = 0; j < n_; ++j) {
        const int64_t c = cur_[size_t(j)];
        if (c >= r || (sleep_ && waking_[size_t(j)])) continue;
        const int lev = threshold_level(j, tail_ - c), old = level_[size_t(j)];
        if (lev == old) continue;
        const double s0 = seg_start_[size_t(j)];
        const double left = work_left_[size_t(j)] - (t > s0 ? t - s0 : 0.0) * rates_[size_t(old)];
        work_left_[size_t(j)] = left > 0.0 ? left : 0.0;
        close_segment(j, t);
        count_switch();
        double begin = t;
        if constexpr (kStall) begin = stall(j, avail_[size_t(j)] > t ? avail_[size_t(j)] : t);
        level_[size_t(j)] = lev;
        seg_start_[size_t(j)] = begin;
        schedule(j, begin + work_left_[size_t(j)] / rates_[size_t(lev)]);
      }
    }
    for_each_at(r, [&](int j) {
      if (!(sleep_ && waking_[size_t(j)])) wake_or_start(j, r, t);
    });
    schedule(n_, src_.next_arrival(r + 1, t));
  }

  // f(j) for every server j whose current request is r, in ascending j; f(j) may change cur_[j]
  // but no other server's. With many servers they are selected first, branch-free, then
  // visited by their bits (one loop exit to predict instead of one random branch per server;
  // with a few servers the plain loop was as fast).
  template <class F>
  void for_each_at(int64_t r, F&& f) {
    const int64_t* cur = cur_.data();
    if (!tree()) {
      for (int j = 0; j < n_; ++j)
        if (cur[j] == r) f(j);
      return;
    }
    for (int base = 0; base < n_; base += 64) {
      const int end = std::min(n_, base + 64);
      uint64_t mask = 0;
      for (int j = base; j < end; ++j) mask |= uint64_t(cur[j] == r) << (j - base);
      while (mask != 0) {
        f(base + __builtin_ctzll(mask));
        mask &= mask - 1;
      }
    }
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
    if (!late && q.done == k_)
      depart(r, t);
    else if (late && q.ended == n_)
      finalize_call(r);
  }

  void depart(int64_t r, double t) {
    FLAGCORE_CHECK_STATE(r == head_, "fork-join: request " << r << " departed before request " << head_);
    ++head_;
    Request& q = req(r);
    q.departure = t;
    if (cancel_) {
      for_each_at(r, [&](int i) {
        if (sleep_ && waking_[size_t(i)]) {  // the task never started: nothing ran
          task_busy_[size_t(i)] = 0.0;
          task_energy_[size_t(i)] = 0.0;
          clear_win_e(i);
        } else {
          close_segment(i, t);
        }
        end_task(i, q, true);
        ++res_.events;
        advance(i, r, t);
      });
    }
    if (q.ended == n_) finalize_call(r);
  }

  void flush_hist() {
    if (hist_hi_ < hist_lo_) return;
    for (int b = hist_lo_; b <= hist_hi_; ++b) {
      const uint32_t c = hist_[size_t(b)];
      if (c == 0) continue;
      res_.hist_batch.push_back(int32_t(hist_b_));
      res_.hist_bucket.push_back(int32_t(b));
      res_.hist_count.push_back(c);
      hist_[size_t(b)] = 0;
    }
    hist_lo_ = LogHistogramLayout::kBuckets;
    hist_hi_ = -1;
  }

  // finalize inlined into its callers with the scan (a few servers: +3 % requests/s at
  // (4, 2)), out of line with the tree (inlined, (100, 50) ran 3 % slower)
  void finalize_call(int64_t r) {
    if constexpr (kTree == 0)
      finalize(r);
    else
      finalize_outline(r);
  }
#if defined(__GNUC__)
  __attribute__((noinline))
#endif
  void
  finalize_outline(int64_t r) {
    finalize(r);
  }
  FLAGCORE_SIM_INLINE void finalize(int64_t r) {
    FLAGCORE_CHECK_STATE(r == fin_, "fork-join: request " << r << " finalised before request " << fin_);
    ++fin_;
    const Request& q = req(r);
    if (trace_mode_) {
      trace_.departures[r] = q.departure;
      trace_.busy[r] = q.busy;
      trace_.wasted[r] = q.wasted_time;
      return;
    }
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
    if (r >= fb_next_) {  // the next batch of finalised requests
      while (r >= fb_next_) fb_next_ = batch_start(++fb_ + 1);
      frow_ = &batch_row(fb_);
    }
    const int64_t b = fb_;
    BatchRow& row = *frow_;
    row.requests += 1.0;
    row.sum_response += T;
    row.sum_energy += q.energy;
    row.sum_wasted_time += q.wasted_time;
    // requests are finalised in arrival order, so batches arrive one after the other: one
    // dense histogram for the current batch, flushed to the sparse result when it changes
    if (b != hist_b_) {
      flush_hist();
      hist_b_ = b;
    }
    const int idx = LogHistogramLayout::index(T);
    ++hist_[size_t(idx)];
    hist_lo_ = std::min(hist_lo_, idx);
    hist_hi_ = std::max(hist_hi_, idx);
  }

  const int n_, k_, m_, L_, S_;  // m_: most levels of one server; L_: levels of all servers
  const bool cancel_, sleep_exp_, wake_exp_;
  static constexpr bool sleep_ = kSleep, redraw_ = kRedraw;
  const std::vector<double> rates_, powers_;
  const std::vector<SleepState> states_;
  const double switch_energy_, switch_time_, switch_power_;
  const std::vector<int64_t> thresholds_;
  const double deadline_;
  const bool known_size_, replay_;
  std::vector<double> avail_;   // per server: end of its current switch stall
  std::vector<int> order_;      // levels by ascending rate (deadline policy)
  std::vector<int> off_, cnt_;  // per server: first global level index, number of levels
  const int64_t w0_, w1_, requests_, batches_, max_in_system_;
  Source& src_;
  ForkJoinResult& res_;
  int64_t* progress_;
  TraceOut trace_;
  const bool trace_mode_;

  std::vector<double> ev_time_;
  std::vector<uint64_t> ev_seq_;
  std::vector<int> tree_;
  std::vector<int> dirty_;        // slots scheduled since the tree was last brought up to date
  std::vector<char> dirty_flag_;  // per slot: in dirty_
  int n_dirty_ = 0, depth_ = 0;
  int leaves_ = 1;
  bool use_tree_ = false;
  uint64_t seq_ = 0;

  std::vector<int64_t> cur_;
  std::vector<int> level_;
  std::vector<double> seg_start_, work_left_, task_busy_, task_energy_;
  std::vector<double> task_win_e_;  // [n][m] (kMid) or [n]: the current task's busy energy in the window

  std::vector<char> waking_;
  std::vector<int> wake_state_;
  std::vector<double> wake_start_, idle_since_, idle_acct_, enter_;  // enter_: [n][S + 1]

  std::vector<Request> ring_;
  int64_t mask_ = 0;
  int64_t tail_ = 0, head_ = 0, fin_ = 0;  // next to arrive, to depart, to finalise

  std::vector<uint32_t> hist_;  // the current batch's response-time histogram
  int64_t hist_b_ = 0;
  int hist_lo_ = LogHistogramLayout::kBuckets, hist_hi_ = -1;

  int window_ = 0;                // 0 warm-up, 1 measuring, 2 past the measured arrivals
  int64_t tb_ = 0;                // batch of the time window
  int64_t tb_next_ = 0;           // first request of batch tb_ + 1
  int64_t fb_ = 0, fb_next_ = 0;  // batch of the finalised requests, first request of the next
  BatchRow* trow_ = nullptr;      // &batch_row(tb_) once the window has opened
  BatchRow* frow_ = nullptr;      // &batch_row(fb_) (set in the constructor unless a trace)
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

// The service distribution's parameters that give unit-mean samples (simulate() and
// sample_service_cpu): fn names the caller in the error.
void check_service(ServiceKind kind, double param, const double* table, size_t size, const char* fn) {
  switch (kind) {
    case ServiceKind::exponential:
    case ServiceKind::deterministic:
      break;
    case ServiceKind::gamma:
    case ServiceKind::lognormal:
      FLAGCORE_CHECK_ARG(param > 0 && std::isfinite(param),
                         fn << ": service parameter must be positive, got " << param);
      break;
    case ServiceKind::pareto:
      FLAGCORE_CHECK_ARG(param > 1 && std::isfinite(param),
                         fn << ": Pareto alpha must be > 1, got " << param);
      break;
    case ServiceKind::empirical:
      FLAGCORE_CHECK_ARG(size > 0, fn << ": empirical service needs at least one value");
      for (size_t i = 0; i < size; ++i)
        FLAGCORE_CHECK_ARG(std::isfinite(table[i]) && table[i] >= 0.0,
                           fn << ": empirical service times must be finite and >= 0, got " << table[i]);
      break;
    default:
      FLAGCORE_CHECK_ARG(false, fn << ": unknown service kind " << int(kind));
  }
}

void validate(const ForkJoinConfig& c) {
  FLAGCORE_CHECK_ARG(c.n >= 1, "simulate: n must be >= 1, got " << c.n);
  FLAGCORE_CHECK_ARG(c.k >= 1 && c.k <= c.n, "simulate: k must be in [1, n=" << c.n << "], got " << c.k);
  FLAGCORE_CHECK_ARG(c.arrival_rate > 0 && std::isfinite(c.arrival_rate),
                     "simulate: arrival_rate must be positive and finite, got " << c.arrival_rate);
  const size_t m = c.rates.size();
  FLAGCORE_CHECK_ARG(m >= 1 && c.powers.size() == m && c.probs.size() == m,
                     "simulate: rates, powers and probs must have one entry per level");
  std::vector<int> sets = c.server_levels;  // the level sets whose probabilities sum to 1
  if (sets.empty()) {
    sets.push_back(int(m));
  } else {
    FLAGCORE_CHECK_ARG(int(sets.size()) == c.n,
                       "simulate: server_levels must have n = " << c.n << " entries, got " << sets.size());
    int64_t tot = 0;
    for (int x : sets) {
      FLAGCORE_CHECK_ARG(x >= 1, "simulate: every server needs at least one level, got " << x);
      tot += x;
    }
    FLAGCORE_CHECK_ARG(tot == int64_t(m),
                       "simulate: server_levels sum to " << tot << ", but there are " << m << " levels");
  }
  size_t first = 0;
  for (int x : sets) {
    double sum = 0.0;
    for (size_t s = first; s < first + size_t(x); ++s) sum += c.probs[s];
    FLAGCORE_CHECK_ARG(std::fabs(sum - 1.0) <= 1e-9, "simulate: probs must sum to 1 per server, got " << sum);
    first += size_t(x);
  }
  for (size_t s = 0; s < m; ++s) {
    FLAGCORE_CHECK_ARG(c.rates[s] > 0 && std::isfinite(c.rates[s]),
                       "simulate: rates must be positive, got " << c.rates[s]);
    FLAGCORE_CHECK_ARG(c.powers[s] >= 0 && std::isfinite(c.powers[s]),
                       "simulate: powers must be >= 0, got " << c.powers[s]);
    FLAGCORE_CHECK_ARG(c.probs[s] >= 0 && c.probs[s] <= 1,
                       "simulate: probs must be in [0, 1], got " << c.probs[s]);
  }
  FLAGCORE_CHECK_ARG(c.idle_power >= 0 && std::isfinite(c.idle_power), "simulate: idle_power must be >= 0");
  FLAGCORE_CHECK_ARG(c.requests >= 1 && c.requests <= kMaxRequests,
                     "simulate: requests must be in [1, 2^53], got " << c.requests);
  FLAGCORE_CHECK_ARG(c.warmup >= 0 && c.warmup <= kMaxRequests - c.requests,
                     "simulate: warmup must be >= 0 and warmup + requests <= 2^53, got warmup " << c.warmup);
  FLAGCORE_CHECK_ARG(c.batches >= 1 && c.requests >= c.batches,
                     "simulate: requests (" << c.requests << ") must be >= batches (" << c.batches << ")");
  FLAGCORE_CHECK_ARG(c.requests / c.batches < (int64_t(1) << 32), "simulate: too many requests per batch");
  FLAGCORE_CHECK_ARG(c.max_in_system >= 1, "simulate: max_in_system must be >= 1");
  FLAGCORE_CHECK_ARG(c.switch_energy >= 0 && std::isfinite(c.switch_energy),
                     "simulate: switch_energy must be >= 0");
  for (const SleepState& st : c.sleep_states) {
    FLAGCORE_CHECK_ARG(st.after >= 0 && std::isfinite(st.after),
                       "simulate: sleep state 'after' must be >= 0 and finite");
    FLAGCORE_CHECK_ARG(st.power >= 0 && std::isfinite(st.power),
                       "simulate: sleep state power must be >= 0 and finite");
    FLAGCORE_CHECK_ARG(st.wake_latency >= 0 && std::isfinite(st.wake_latency),
                       "simulate: sleep state wake_latency must be >= 0 and finite");
    FLAGCORE_CHECK_ARG(st.wake_power >= 0 && std::isfinite(st.wake_power),
                       "simulate: sleep state wake_power must be >= 0 and finite");
  }
  FLAGCORE_CHECK_ARG(c.switch_time >= 0 && std::isfinite(c.switch_time),
                     "simulate: switch_time must be >= 0 and finite, got " << c.switch_time);
  FLAGCORE_CHECK_ARG(c.switch_power >= 0 && std::isfinite(c.switch_power),
                     "simulate: switch_power must be >= 0 and finite, got " << c.switch_power);
  FLAGCORE_CHECK_ARG(!c.redraw_on_arrival || (c.policy == SpeedPolicy::random && c.switch_time == 0.0),
                     "simulate: redraw_on_arrival needs the random policy and switch_time = 0");
  switch (c.policy) {
    case SpeedPolicy::random:
      break;
    case SpeedPolicy::threshold:
      for (int x : sets)
        FLAGCORE_CHECK_ARG(c.thresholds.size() + 1 == size_t(x),
                           "simulate: the threshold policy needs m - 1 = " << x - 1 << " thresholds, got "
                                                                           << c.thresholds.size());
      for (size_t i = 0; i < c.thresholds.size(); ++i)
        FLAGCORE_CHECK_ARG(c.thresholds[i] >= 0 && (i == 0 || c.thresholds[i] >= c.thresholds[i - 1]),
                           "simulate: thresholds must be >= 0 and non-decreasing, got " << c.thresholds[i]);
      break;
    case SpeedPolicy::deadline:
      FLAGCORE_CHECK_ARG(c.deadline >= 0 && std::isfinite(c.deadline),
                         "simulate: deadline must be >= 0 and finite, got " << c.deadline);
      break;
    default:
      FLAGCORE_CHECK_ARG(false, "simulate: unknown speed policy " << int(c.policy));
  }
  if (!c.trace_arrivals.empty()) {
    FLAGCORE_CHECK_ARG(c.mmpp_rates.empty() && !c.renewal_arrivals,
                       "simulate: a trace excludes MMPP and renewal arrivals");
    const int64_t R = int64_t(c.trace_arrivals.size());
    FLAGCORE_CHECK_ARG(R == c.requests + c.warmup,
                       "simulate: the trace has "
                           << R << " arrivals, expected warmup + requests = " << c.requests + c.warmup);
    for (int64_t r = 0; r < R; ++r) {
      const double a = c.trace_arrivals[size_t(r)];
      FLAGCORE_CHECK_ARG(
          std::isfinite(a) && a >= 0 && (r == 0 || a >= c.trace_arrivals[size_t(r - 1)]),
          "simulate: trace arrivals must be finite, >= 0 and non-decreasing (index " << r << ")");
    }
    FLAGCORE_CHECK_ARG(c.trace_sizes.empty() || c.trace_sizes.size() == size_t(R) * size_t(c.n),
                       "simulate: trace sizes must be [requests, n] = [" << R << ", " << c.n << "]");
    for (size_t i = 0; i < c.trace_sizes.size(); ++i)
      FLAGCORE_CHECK_ARG(std::isfinite(c.trace_sizes[i]) && c.trace_sizes[i] >= 0,
                         "simulate: trace sizes must be finite and >= 0 (flat index " << i << ")");
  }
  if (!c.mmpp_rates.empty()) {
    const size_t P = c.mmpp_rates.size();
    FLAGCORE_CHECK_ARG(c.mmpp_switch.size() == P * P, "simulate: mmpp_switch must be phases x phases");
    for (size_t i = 0; i < P; ++i) {
      double tot = c.mmpp_rates[i];
      FLAGCORE_CHECK_ARG(tot >= 0 && std::isfinite(tot), "simulate: MMPP rates must be >= 0 and finite");
      for (size_t j = 0; j < P; ++j) {
        const double w = c.mmpp_switch[i * P + j];
        FLAGCORE_CHECK_ARG(w >= 0 && std::isfinite(w), "simulate: MMPP switch rates must be >= 0 and finite");
        if (j != i) tot += w;
      }
      FLAGCORE_CHECK_ARG(tot > 0, "simulate: every MMPP phase needs an arrival or a switch rate");
    }
  }
  if (c.renewal_arrivals) {
    FLAGCORE_CHECK_ARG(c.mmpp_rates.empty(), "simulate: renewal and MMPP arrivals are exclusive");
    FLAGCORE_CHECK_ARG(c.arrival_kind != ServiceKind::empirical || !c.arrival_table.empty(),
                       "simulate: empirical inter-arrival times need a table");
    FLAGCORE_CHECK_ARG(c.arrival_kind == ServiceKind::exponential ||
                           c.arrival_kind == ServiceKind::deterministic ||
                           c.arrival_kind == ServiceKind::empirical ||
                           (c.arrival_param > 0 && std::isfinite(c.arrival_param)),
                       "simulate: inter-arrival parameter must be positive");
  }
  check_service(c.service, c.service_param, c.empirical.data(), c.empirical.size(), "simulate");
}

template <bool kSleep, bool kStall>
void run_policy(const ForkJoinConfig& cfg, RandomSource& src, ForkJoinResult& res, int64_t* progress) {
  constexpr int kThreshold = int(SpeedPolicy::threshold), kDeadline = int(SpeedPolicy::deadline);
  switch (cfg.policy) {
    case SpeedPolicy::threshold:
      Engine<RandomSource, kSleep, false, kThreshold, kStall>(cfg, src, res, progress, TraceOut{}).run();
      break;
    case SpeedPolicy::deadline:
      Engine<RandomSource, kSleep, false, kDeadline, kStall>(cfg, src, res, progress, TraceOut{}).run();
      break;
    default:
      Engine<RandomSource, kSleep, false, 0, kStall>(cfg, src, res, progress, TraceOut{}).run();
  }
}

template <bool kSleep>
void run_engine(const ForkJoinConfig& cfg, RandomSource& src, ForkJoinResult& res, int64_t* progress) {
  if (cfg.redraw_on_arrival)  // validated: random policy, no switch stall
    Engine<RandomSource, kSleep, true, 0, false>(cfg, src, res, progress, TraceOut{}).run();
  else if (cfg.switch_time > 0.0)
    run_policy<kSleep, true>(cfg, src, res, progress);
  else
    run_policy<kSleep, false>(cfg, src, res, progress);
}

}  // namespace

PhiloxBatchFn philox_batch_kernel() {
#if defined(FLAGCORE_X86_DISPATCH)
  // AVX2 on AVX-512 machines too: a 512-bit version (4 blocks per register) ran the whole
  // event loop 4-5 % slower than the 128-bit portable loop on a Xeon (frequency licence / port
  // sharing), the 256-bit one 3-5 % faster.
  if (simd_level() != SimdLevel::generic) return &simd_avx2::philox_batch;
#endif
  return nullptr;
}

ForkJoinResult simulate_forkjoin(const ForkJoinConfig& cfg, int64_t* progress) {
  validate(cfg);
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = thread_cpu_seconds();
  RandomSource src{Rng(cfg.seed, cfg.stream)};
  src.inv_rate = 1.0 / cfg.arrival_rate;
  src.m = int(cfg.rates.size());
  src.service.kind = cfg.service;
  src.service.param = cfg.service_param;
  src.service.table = cfg.empirical.data();
  src.service.table_size = cfg.empirical.size();
  std::vector<int> off, cnt;
  if (cfg.server_levels.empty()) {
    double acc = 0.0;
    for (size_t s = 0; s < cfg.probs.size(); ++s) {
      acc += cfg.probs[s];
      src.cum.push_back(s + 1 == cfg.probs.size() ? 2.0 : acc);  // u < 1 always lands somewhere
    }
  } else {
    int o = 0;
    for (int x : cfg.server_levels) {
      off.push_back(o);
      cnt.push_back(x);
      double acc = 0.0;
      for (int s = 0; s < x; ++s) {
        acc += cfg.probs[size_t(o + s)];
        src.cum.push_back(s + 1 == x ? 2.0 : acc);
      }
      o += x;
    }
    src.off = off.data();
    src.cnt = cnt.data();
  }
  src.n = cfg.n;
  if (!cfg.trace_arrivals.empty()) {
    src.mode = 3;
    src.tr_arrivals = cfg.trace_arrivals.data();
    src.tr_count = int64_t(cfg.trace_arrivals.size());
    src.tr_sizes = cfg.trace_sizes.empty() ? nullptr : cfg.trace_sizes.data();
  }
  if (cfg.renewal_arrivals) {
    src.mode = 1;
    src.interarrival = ServiceSampler{cfg.arrival_kind, cfg.arrival_param, cfg.arrival_table.data(),
                                      cfg.arrival_table.size()};
  }
  if (!cfg.mmpp_rates.empty()) {
    const int P = int(cfg.mmpp_rates.size());
    src.mode = 2;
    src.phases = P;
    src.phase = 0;  // the first phase at time 0 (the warm-up forgets it)
    src.ph_rate = cfg.mmpp_rates;
    src.ph_total.assign(size_t(P), 0.0);
    src.ph_cum.assign(size_t(P) * size_t(P), 2.0);
    for (int i = 0; i < P; ++i) {
      double q = 0.0;
      for (int j = 0; j < P; ++j)
        if (j != i) q += cfg.mmpp_switch[size_t(i) * size_t(P) + size_t(j)];
      src.ph_total[size_t(i)] = cfg.mmpp_rates[size_t(i)] + q;
      double c = 0.0;
      int last = -1;
      for (int j = 0; j < P; ++j) {
        const double w = j == i ? 0.0 : cfg.mmpp_switch[size_t(i) * size_t(P) + size_t(j)];
        c += q > 0 ? w / q : 0.0;
        src.ph_cum[size_t(i) * size_t(P) + size_t(j)] = c;
        if (w > 0) last = j;
      }
      if (last >= 0) src.ph_cum[size_t(i) * size_t(P) + size_t(last)] = 2.0;  // u < 1 lands somewhere
    }
  }
  ForkJoinResult res;
  if (src.mode == 0 && cfg.service == ServiceKind::exponential && cfg.rates.size() == 1 &&
      cfg.server_levels.empty() && cfg.sleep_states.empty() && !cfg.redraw_on_arrival &&
      cfg.policy == SpeedPolicy::random && cfg.switch_time == 0.0) {
    PlainSource plain{src.rng, src.inv_rate, &ExpZiggurat::get()};
    if (cfg.n + 1 > kMaxScan)
      Engine<PlainSource, false, false, 0, false, 1>(cfg, plain, res, progress, TraceOut{}).run();
    else
      Engine<PlainSource, false, false, 0, false, 0>(cfg, plain, res, progress, TraceOut{}).run();
  } else if (!cfg.sleep_states.empty())
    run_engine<true>(cfg, src, res, progress);
  else
    run_engine<false>(cfg, src, res, progress);
  res.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.cpu_seconds = thread_cpu_seconds() - c0;
  return res;
}

std::vector<ForkJoinResult> simulate_forkjoin_replications(const ForkJoinConfig& cfg, int replications,
                                                           int threads, int64_t* progress) {
  FLAGCORE_CHECK_ARG(replications >= 1, "simulate: replications must be >= 1, got " << replications);
  validate(cfg);
  std::vector<ForkJoinResult> out(static_cast<size_t>(replications));
  parallel_for(
      size_t(replications),
      [&](size_t r) {
        ForkJoinConfig c = cfg;
        c.stream = cfg.stream + r;
        out[r] = simulate_forkjoin(c, progress ? progress + r : nullptr);
      },
      threads);
  return out;
}

void simulate_forkjoin_trace(int n, int k, bool cancel, int64_t requests, const double* arrivals,
                             const double* services, double* departures, double* busy, double* wasted) {
  FLAGCORE_CHECK_ARG(n >= 1 && k >= 1 && k <= n,
                     "simulate_trace: need 1 <= k <= n, got n=" << n << ", k=" << k);
  FLAGCORE_CHECK_ARG(requests >= 1, "simulate_trace: need at least one request");
  for (int64_t r = 0; r < requests; ++r) {
    FLAGCORE_CHECK_ARG(
        std::isfinite(arrivals[r]) && arrivals[r] >= 0 && (r == 0 || arrivals[r] >= arrivals[r - 1]),
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
  Engine<TraceSource, false, false, 0, false> engine(cfg, src, res, nullptr,
                                                     TraceOut{departures, busy, wasted});
  engine.run();
  FLAGCORE_CHECK_STATE(res.arrivals == requests, "simulate_trace: not every request arrived");
}

void sample_service_cpu(ServiceKind kind, double param, const double* table, uint64_t table_size,
                        uint64_t seed, uint64_t stream, int64_t count, double* out) {
  // the parameters simulate() accepts: a Pareto alpha <= 1 gave negative "unit-mean" samples, a
  // gamma shape <= 0 NaN
  check_service(kind, param, table, static_cast<size_t>(table_size), "sim_sample");
  FLAGCORE_CHECK_ARG(count >= 0, "sim_sample: count must be >= 0, got " << count);
  Rng rng(seed, stream);
  const ServiceSampler sampler{kind, param, table, table_size};
  // Ctrl-C every 2^16 samples (4e8 samples ran 48 s without a check); the draws are those of one
  // uninterrupted loop
  constexpr int64_t kCheck = int64_t(1) << 16;
  for (int64_t i0 = 0; i0 < count; i0 += kCheck) {
    check_cancel();
    const int64_t i1 = std::min(count, i0 + kCheck);
    for (int64_t i = i0; i < i1; ++i) out[i] = sampler(rng);
  }
}

void det_log_cpu(const double* x, int64_t count, double* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = det_log(x[i]);
}

void det_exp_cpu(const double* x, int64_t count, double* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = det_exp(x[i]);
}

}  // namespace sim
}  // namespace flagcore
