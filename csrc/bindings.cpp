// The only file that includes pybind11: converts numpy arrays to raw pointers + sizes, releases
// the GIL around native work, and returns numpy arrays. Argument checking with user-facing
// messages lives in the Python layer (python/flagcore); the checks here only keep a direct
// caller of the private module from crashing the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cxxabi.h>
#if defined(__linux__)
#include <dlfcn.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/blas.hpp"
#include "common/cancel.hpp"
#include "common/check.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "cuda/dtype.hpp"
#include "flag/flag_cpu.hpp"
#include "flag/flag_plan.hpp"
#include "flag/gram.hpp"
#include "flag/gram_amx.hpp"
#include "rules/cluster.hpp"
#include "rules/columns.hpp"
#include "rules/coordinate.hpp"
#include "rules/coordinate_cuda.hpp"  // declarations and kCoordMaxP only: every build
#include "rules/distance.hpp"
#include "rules/reference.hpp"
#include "sim/forkjoin_sim.hpp"
#include "sim/histogram.hpp"
#include "sim/rng.hpp"
#ifdef FLAGCORE_WITH_CUDA
#include "cuda/device.hpp"
#include "flag/flag_cuda.hpp"
#endif

namespace py = pybind11;
using namespace flagcore;

#ifndef FLAGCORE_VERSION
#define FLAGCORE_VERSION "0.0.0"
#endif

namespace {

// The thread id of Python's main thread (set at import): only there does Python run signal
// handlers, so only there is polling for Ctrl-C useful.
unsigned long g_main_thread = 0;

bool on_main_thread() {
  return PyThread_get_thread_ident() == g_main_thread;
}

// Interpreter exit, as seen from other threads. flagcore's atexit hook (_backend.py) sets
// g_exiting and then waits (GIL released, up to 2 s) until no other thread is inside a Python
// callback of a native call (the simulator's progress): after it, no such callback starts, so
// no thread is ended by CPython's finalization while it runs Python inside flagcore's frames
// (a forced unwind through them touched Python objects without the GIL: a rare crash at exit).
std::atomic<bool> g_exiting{false};
std::atomic<int> g_in_callback{0};

struct InCallback {  // counts this thread in g_in_callback while it lives
  InCallback() { g_in_callback.fetch_add(1); }
  ~InCallback() { g_in_callback.fetch_sub(1); }
};

void at_exit() {
  g_exiting.store(true);
  py::gil_scoped_release release;  // main thread, before finalization: taken back normally
  for (int i = 0; i < 2000 && g_in_callback.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// Returns f(), running restore() after it in plain code, never in a destructor, also when f
// throws, except for a forced unwind: a thread that is not Python's main thread and touches the
// GIL while the interpreter finalizes is ended by CPython (< 3.14) with pthread_exit, whose
// forced unwind may pass through here and through pybind11's dispatcher, but would
// std::terminate the whole process if it started inside a destructor (RAII GIL guards release
// or take the GIL in theirs), and must not give back a GIL state its thread no longer owns.
template <typename F, typename R>
auto then_restore(F&& f, R&& restore) {
  decltype(f()) out{};
  try {
    out = f();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (...) {
    restore();
    throw;
  }
  restore();
  return out;
}

// Runs f with the GIL released and takes it back in plain code (then_restore).
template <typename F>
void without_gil(F&& f) {
  PyThreadState* state = PyEval_SaveThread();
  then_restore(
      [&] {
        f();
        return true;
      },
      [&] { PyEval_RestoreThread(state); });
}

// Long native work, interruptible: a CancelScope on this thread whose poll (on Python's main
// thread only) takes the GIL and asks Python for pending signals (Ctrl-C); f runs without the
// GIL. The native loops throw Cancelled (translated to the pending KeyboardInterrupt) at their
// next check_cancel().
bool poll_signals() {
  if (!on_main_thread()) return false;  // the main thread is never ended by finalization
  py::gil_scoped_acquire acquire;
  return PyErr_CheckSignals() != 0;
}

template <typename F>
void interruptibly(F&& f) {
  CancelScope scope{{false}, &poll_signals};
  CancelScopeGuard guard(scope);
  without_gil(std::forward<F>(f));
}

// A stack of gradient rows: a (b, p, n) array whose last axis is contiguous (any strides on the
// first two), or a list/tuple of p one-dimensional contiguous arrays (b = 1). The handles keep
// the arrays alive while the GIL is released.
template <typename T>
struct Rows {
  std::vector<py::array> keep;
  std::vector<const T*> ptr;
  int64_t b = 0, p = 0, n = 0;
};

bool is_dtype(const py::array& a, char kind, int size) {
  return a.dtype().kind() == kind && a.itemsize() == size;
}

char dtype_code(const py::object& x) {
  py::array first;
  if (py::isinstance<py::list>(x) || py::isinstance<py::tuple>(x)) {
    py::sequence seq = x;
    FLAGCORE_CHECK_ARG(seq.size() > 0, "gradients: empty list");
    first = seq[0].cast<py::array>();
  } else {
    first = x.cast<py::array>();
  }
  if (is_dtype(first, 'f', 4)) return 'f';
  if (is_dtype(first, 'f', 8)) return 'd';
  FLAGCORE_CHECK_ARG(
      false, "gradients: dtype must be float32 or float64, got " << std::string(py::str(first.dtype())));
  return 0;
}

template <typename T>
Rows<T> make_rows(const py::object& x) {
  Rows<T> rows;
  if (py::isinstance<py::list>(x) || py::isinstance<py::tuple>(x)) {
    py::sequence seq = x;
    rows.b = 1;
    rows.p = static_cast<int64_t>(seq.size());
    for (size_t i = 0; i < seq.size(); ++i) {
      py::array a = seq[i].cast<py::array>();
      FLAGCORE_CHECK_ARG(
          py::isinstance<py::array_t<T>>(a) && a.ndim() == 1,
          "gradients[" << i << "]: must be a one-dimensional array of the same dtype as gradients[0]");
      FLAGCORE_CHECK_ARG(a.shape(0) <= 1 || a.strides(0) == static_cast<py::ssize_t>(sizeof(T)),
                         "gradients[" << i << "]: must be contiguous");
      if (i == 0) rows.n = a.shape(0);
      FLAGCORE_CHECK_ARG(a.shape(0) == rows.n, "gradients[" << i << "]: has " << a.shape(0)
                                                            << " elements, gradients[0] has " << rows.n);
      rows.ptr.push_back(static_cast<const T*>(a.data()));
      rows.keep.push_back(a);
    }
    return rows;
  }
  py::array a = x.cast<py::array>();
  FLAGCORE_CHECK_ARG(py::isinstance<py::array_t<T>>(a), "gradients: dtype mismatch");
  FLAGCORE_CHECK_ARG(a.ndim() == 3, "gradients: must be (b, p, n), got ndim " << a.ndim());
  rows.b = a.shape(0);
  rows.p = a.shape(1);
  rows.n = a.shape(2);
  FLAGCORE_CHECK_ARG(rows.n <= 1 || a.strides(2) == static_cast<py::ssize_t>(sizeof(T)),
                     "gradients: the last axis must be contiguous");
  const char* base = static_cast<const char*>(a.data());
  rows.ptr.reserve(static_cast<size_t>(rows.b * rows.p));
  for (int64_t q = 0; q < rows.b; ++q)
    for (int64_t i = 0; i < rows.p; ++i)
      rows.ptr.push_back(reinterpret_cast<const T*>(base + q * a.strides(0) + i * a.strides(1)));
  rows.keep.push_back(a);
  return rows;
}

FlagParams make_params(int64_t r, double lam, int max_iter, double eps, double tol,
                       const std::string& scale) {
  FLAGCORE_CHECK_ARG(r >= 1, "FlagParams: r must be >= 1, got " << r);
  FLAGCORE_CHECK_ARG(max_iter >= 1 && max_iter <= kFlagMaxIter,
                     "FlagParams: max_iter must be in [1, " << kFlagMaxIter << "], got " << max_iter);
  FLAGCORE_CHECK_ARG(lam >= 0.0 && lam <= kFlagMaxLam,
                     "FlagParams: lam must be in [0, " << kFlagMaxLam << "], got " << lam);
  FLAGCORE_CHECK_ARG(eps > 0.0, "FlagParams: eps must be > 0, got " << eps);
  FLAGCORE_CHECK_ARG(tol >= 0.0, "FlagParams: tol must be >= 0, got " << tol);
  FLAGCORE_CHECK_ARG(scale == "paper" || scale == "median_norm",
                     "FlagParams: scale must be 'paper' or 'median_norm', got '" << scale << "'");
  FlagParams prm;
  prm.r = r;
  prm.lam = lam;
  prm.max_iter = max_iter;
  prm.eps = eps;
  prm.tol = tol;
  prm.scale = scale == "paper" ? 0 : 1;
  return prm;
}

// The IRLS outputs of b problems. The objective is not preallocated at (b, max_iter + 1): each
// problem's history (the steps it took) comes back in an ObjectiveHistory and becomes a
// (b, 1 + most steps taken) array padded with NaN, so memory follows the work, not max_iter.
struct InfoArrays {
  py::array_t<double> coef, weights, ratios, objective;
  py::array_t<uint8_t> excluded, rejected;
  py::array_t<int32_t> iterations, rank;
  ObjectiveHistory hist;
  InfoArrays(int64_t b, int64_t p)
      : coef({b, p}),
        weights({b, p}),
        ratios({b, p}),
        excluded({b, p}),
        rejected({b}),
        iterations({b}),
        rank({b}) {}
  // Ragged batches: the per-worker arrays run over the rows of all problems, one after another.
  InfoArrays(int64_t rows, int64_t b, bool /*ragged*/)
      : coef(rows), weights(rows), ratios(rows), excluded(rows), rejected(b), iterations(b), rank(b) {}
  FlagIrlsOut view() {
    return FlagIrlsOut{coef.mutable_data(),
                       weights.mutable_data(),
                       ratios.mutable_data(),
                       nullptr,
                       excluded.mutable_data(),
                       iterations.mutable_data(),
                       rejected.mutable_data(),
                       rank.mutable_data(),
                       0};
  }
  py::dict to_dict() {
    size_t steps = 1;
    for (const auto& h : hist) steps = std::max(steps, h.size());
    const int64_t b = static_cast<int64_t>(hist.size());
    objective = py::array_t<double>({b, static_cast<int64_t>(steps)});
    double* o = objective.mutable_data();
    for (int64_t q = 0; q < b; ++q) {
      const auto& h = hist[static_cast<size_t>(q)];
      for (size_t k = 0; k < steps; ++k) o[q * int64_t(steps) + int64_t(k)] = k < h.size() ? h[k] : NAN;
    }
    py::dict d;
    d["coefficients"] = coef;
    d["weights"] = weights;
    d["reconstruction_ratios"] = ratios;
    d["objective"] = objective;
    d["excluded"] = excluded.attr("astype")("bool");
    d["iterations"] = iterations;
    d["last_step_rejected"] = rejected.attr("astype")("bool");
    d["rank"] = rank;
    return d;
  }
};

template <typename T>
py::array_t<double> gram_impl(const py::object& x) {
  Rows<T> rows = make_rows<T>(x);
  py::array_t<double> out({rows.b, rows.p, rows.p});
  double* o = out.mutable_data();
  interruptibly([&] { gram_cpu<T>(rows.ptr.data(), rows.b, rows.p, rows.n, o); });
  return out;
}

template <typename T>
py::array weighted_sum_impl(const py::object& x,
                            const py::array_t<double, py::array::c_style | py::array::forcecast>& coef) {
  Rows<T> rows = make_rows<T>(x);
  FLAGCORE_CHECK_ARG(coef.ndim() == 2 && coef.shape(0) == rows.b && coef.shape(1) == rows.p,
                     "weighted_sum: coef must be (b, p) = (" << rows.b << ", " << rows.p << ")");
  py::array_t<T> out({rows.b, rows.n});
  T* o = out.mutable_data();
  const double* c = coef.data();
  interruptibly([&] { weighted_sum_cpu<T>(rows.ptr.data(), c, rows.b, rows.p, rows.n, o); });
  return out;
}

template <typename T>
py::tuple reference_products_impl(const py::object& x,
                                  const py::array_t<double, py::array::c_style | py::array::forcecast>& ref,
                                  bool diag) {
  Rows<T> rows = make_rows<T>(x);
  FLAGCORE_CHECK_ARG(ref.ndim() == 2 && ref.shape(0) == rows.b && ref.shape(1) == rows.n,
                     "reference_products: ref must be (b, n) = (" << rows.b << ", " << rows.n << ")");
  py::array_t<double> cross({rows.b, rows.p});
  py::array_t<double> r2(rows.b);
  py::object sq = py::none();
  double* sq_ptr = nullptr;
  if (diag) {
    py::array_t<double> s({rows.b, rows.p});
    sq_ptr = s.mutable_data();
    sq = s;
  }
  double* c = cross.mutable_data();
  double* r = r2.mutable_data();
  const double* v = ref.data();
  interruptibly([&] { reference_products_cpu<T>(rows.ptr.data(), v, rows.b, rows.p, rows.n, c, r, sq_ptr); });
  return py::make_tuple(cross, r2, sq);
}

template <typename T>
py::array_t<double> gather_columns_impl(
    const py::object& x, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& cols) {
  Rows<T> rows = make_rows<T>(x);
  FLAGCORE_CHECK_ARG(cols.ndim() == 1,
                     "gather_columns: cols must be one-dimensional, got " << cols.ndim() << " dimensions");
  const int64_t k = cols.shape(0);
  const int64_t* c = cols.data();
  for (int64_t j = 0; j < k; ++j)
    FLAGCORE_CHECK_ARG(c[j] >= 0 && c[j] < rows.n, "gather_columns: cols must lie in [0, "
                                                       << rows.n << "), got " << c[j] << " at position "
                                                       << j);
  py::array_t<double> out({rows.b, rows.p, k});
  double* o = out.mutable_data();
  interruptibly([&] { gather_columns_cpu<T>(rows.ptr.data(), rows.b, rows.p, c, k, o); });
  return out;
}

template <typename T>
py::array_t<double> row_squares_impl(const py::object& x) {
  Rows<T> rows = make_rows<T>(x);
  py::array_t<double> sq({rows.b, rows.p});
  double* s = sq.mutable_data();
  interruptibly([&] {
    reference_products_cpu<T>(rows.ptr.data(), nullptr, rows.b, rows.p, rows.n, nullptr, nullptr, s);
  });
  return sq;
}

template <typename T>
py::tuple flag_aggregate_impl(const py::object& x, const FlagParams& prm) {
  Rows<T> rows = make_rows<T>(x);
  FLAGCORE_CHECK_ARG(rows.p >= 1, "flag_aggregate: p must be >= 1");
  py::array_t<T> out({rows.b, rows.n});
  InfoArrays info(rows.b, rows.p);
  FlagIrlsOut view = info.view();
  T* o = out.mutable_data();
  interruptibly(
      [&] { flag_aggregate_cpu<T>(rows.ptr.data(), rows.b, rows.p, rows.n, prm, o, view, info.hist); });
  return py::make_tuple(out, info.to_dict());
}

[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "flagcore was not compiled with GPU support (FLAGCORE_CUDA=OFF or no nvcc at build time)");
}

// ---------------------------------------------------------------- CUDA arrays at the boundary
// A device array as the CUDA entry points take it: address, element type, shape, element strides
// and device, built by the Python layer from a torch tensor (flagcore._backend.cuda_array), which
// keeps the tensor alive until the work on the stream is done. Plain data, so the checks below
// (shapes, dtypes, devices, workspace size) run in every build, before any device is touched.
struct CudaArray {
  std::uintptr_t data = 0;
  cuda::DType dtype = cuda::DType::float32;
  std::vector<int64_t> shape, strides;
  int device = 0;
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

std::string shape_str(const py::array& a) {
  return shape_str(std::vector<int64_t>(a.shape(), a.shape() + a.ndim()));
}

CudaArray make_cuda_array(std::uintptr_t data, cuda::DType dtype, const std::vector<int64_t>& shape,
                          const std::vector<int64_t>& strides, int device) {
  FLAGCORE_CHECK_ARG(cuda::dtype_size(dtype) > 0,
                     "CudaArray: dtype must be a CudaDtype, got the value " << static_cast<int>(dtype));
  FLAGCORE_CHECK_ARG(shape.size() == strides.size(), "CudaArray: shape "
                                                         << shape_str(shape) << " and strides "
                                                         << shape_str(strides) << " differ in length");
  for (int64_t v : shape)
    FLAGCORE_CHECK_ARG(v >= 0, "CudaArray: shape must be >= 0, got " << shape_str(shape));
  FLAGCORE_CHECK_ARG(device >= 0, "CudaArray: device must be >= 0, got " << device);
  CudaArray a;
  a.data = data;
  a.dtype = dtype;
  a.shape = shape;
  a.strides = strides;
  a.device = device;
  return a;
}

int64_t numel(const CudaArray& a) {
  int64_t k = 1;
  for (int64_t v : a.shape) k *= v;
  return k;
}

// Dense row-major (dimensions of size 1 may have any stride; an empty array is dense).
bool is_contiguous(const CudaArray& a) {
  if (numel(a) == 0) return true;
  int64_t want = 1;
  for (size_t i = a.shape.size(); i-- > 0;) {
    if (a.shape[i] != 1 && a.strides[i] != want) return false;
    want *= a.shape[i];
  }
  return true;
}

// One array argument of a CUDA entry point: its dtype, its shape, its device (the data's), dense.
void check_cuda_arg(const CudaArray& a, const char* fn, const char* arg, cuda::DType dtype,
                    const std::vector<int64_t>& shape, int device) {
  FLAGCORE_CHECK_ARG(a.dtype == dtype, fn << ": " << arg << " must be " << cuda::dtype_name(dtype) << ", got "
                                          << cuda::dtype_name(a.dtype));
  FLAGCORE_CHECK_ARG(a.shape == shape,
                     fn << ": " << arg << " must be " << shape_str(shape) << ", got " << shape_str(a.shape));
  FLAGCORE_CHECK_ARG(a.device == device,
                     fn << ": " << arg << " is on CUDA device " << a.device << ", the data on " << device);
  FLAGCORE_CHECK_ARG(is_contiguous(a),
                     fn << ": " << arg << " must be contiguous, got strides " << shape_str(a.strides));
}

// The one workspace of an FA call: a dense uint8 array of at least plan.bytes.
void check_workspace(const CudaArray& ws, const char* fn, const FlagCudaPlan& plan, int device) {
  FLAGCORE_CHECK_ARG(ws.dtype == cuda::DType::uint8 && ws.shape.size() == 1 && is_contiguous(ws),
                     fn << ": ws must be a one-dimensional uint8 array, got " << cuda::dtype_name(ws.dtype)
                        << " " << shape_str(ws.shape));
  FLAGCORE_CHECK_ARG(ws.shape[0] >= plan.bytes,
                     fn << ": ws holds " << ws.shape[0] << " bytes, the plan needs " << plan.bytes);
  FLAGCORE_CHECK_ARG(ws.device == device,
                     fn << ": ws is on CUDA device " << ws.device << ", the data on " << device);
}

void check_gram_kernel(cuda::GramKernel kernel, const char* fn) {
  FLAGCORE_CHECK_ARG(kernel == cuda::GramKernel::automatic || kernel == cuda::GramKernel::registers ||
                         kernel == cuda::GramKernel::tile_pairs || kernel == cuda::GramKernel::staged ||
                         kernel == cuda::GramKernel::blocked,
                     fn << ": kernel must be a GramKernel, got the value " << static_cast<int>(kernel));
}

void check_fa_dtype(cuda::DType dtype, const char* fn, const char* arg) {
  FLAGCORE_CHECK_ARG(cuda::is_fa_dtype(dtype), fn << ": " << arg
                                                  << " must be float32, float16 or bfloat16, got "
                                                  << cuda::dtype_name(dtype));
}

#ifdef FLAGCORE_WITH_CUDA
// Everything the CUDA path would refuse, checked here before any device work (the launchers in
// the CUDA translation units keep their own checks for C++ callers): the FA entry points and
// flag_irls_cuda (uniform plan, automatic kernel).
void check_cuda_fa_call(const char* fn, const FlagCudaPlan& plan, const FlagParams& prm,
                        cuda::GramKernel kernel, bool aligned16) {
  if (plan.b <= 0) return;  // an empty batch launches nothing
  FLAGCORE_CHECK_ARG(prm.r >= 1 && prm.r <= plan.p_min,
                     fn << ": r must be in [1, " << plan.p_min << "] (the smallest p), got " << prm.r);
  FLAGCORE_CHECK_ARG(prm.max_iter >= 1, fn << ": max_iter must be >= 1, got " << prm.max_iter);
  FLAGCORE_CHECK_ARG(kernel != cuda::GramKernel::registers || plan.p_max <= 8,
                     fn << ": the register Gram kernel takes p <= 8, got " << plan.p_max);
  FLAGCORE_CHECK_ARG(kernel != cuda::GramKernel::staged || (plan.p_max <= 16 && aligned16),
                     fn << ": the staged Gram kernel takes p <= 16 with 16-byte aligned rows, got p = "
                        << plan.p_max << (aligned16 ? "" : " (unaligned rows)"));
}

void check_cuda_device(int device) {
  if (cuda::device_count() <= 0)
    throw std::runtime_error("flagcore: no CUDA device is visible (the CUDA path needs a GPU and a driver)");
  FLAGCORE_CHECK_ARG(device >= 0 && device < cuda::device_count(),
                     "flagcore: CUDA device " << device << " does not exist");
}
#endif

// Which libstdc++ the module runs on: "shared" (the process's libstdc++.so, as it must be),
// "static" (a copy linked into the module: its locale state differs from the process's, and the
// first formatted error message crashed on the GPU machine; see CMakeLists.txt), or "unknown"
// (not libstdc++, or not Linux).
std::string libstdcxx_kind() {
#if defined(__linux__) && defined(__GLIBCXX__)
  Dl_info mine{}, lib{};
  // a function libstdc++ defines out of line, and one of this module's own
  void (*probe)(const char*) = &std::__throw_logic_error;
  if (dladdr(reinterpret_cast<void*>(probe), &lib) == 0 ||
      dladdr(reinterpret_cast<void*>(&libstdcxx_kind), &mine) == 0 || !lib.dli_fname || !mine.dli_fname)
    return "unknown";
  return std::string(lib.dli_fname) == mine.dli_fname ? "static" : "shared";
#else
  return "unknown";
#endif
}

void register_cuda_types(py::module_& m) {
  py::enum_<cuda::DType>(m, "CudaDtype", "element type of a device array (torch's dtype names)")
      .value("float32", cuda::DType::float32)
      .value("float16", cuda::DType::float16)
      .value("bfloat16", cuda::DType::bfloat16)
      .value("float64", cuda::DType::float64)
      .value("uint8", cuda::DType::uint8)
      .value("int32", cuda::DType::int32)
      .value("int64", cuda::DType::int64);

  py::enum_<cuda::GramKernel>(m, "GramKernel",
                              "the FA's CUDA Gram kernel: automatic (registers for p <= 8, staged for "
                              "8 < p <= 16 on aligned rows, tile pairs otherwise) or one pinned (tests; "
                              "blocked: 64 x 64 tile pairs through shared memory, any p, not yet chosen "
                              "automatically)")
      .value("automatic", cuda::GramKernel::automatic)
      .value("registers", cuda::GramKernel::registers)
      .value("tile_pairs", cuda::GramKernel::tile_pairs)
      .value("staged", cuda::GramKernel::staged)
      .value("blocked", cuda::GramKernel::blocked);

  py::class_<CudaArray>(m, "CudaArray",
                        "a device array for the CUDA entry points: address, dtype, shape, element "
                        "strides, device (flagcore._backend.cuda_array builds it from a torch tensor); "
                        "read-only")
      .def(py::init(&make_cuda_array), py::kw_only(), py::arg("data"), py::arg("dtype"), py::arg("shape"),
           py::arg("strides"), py::arg("device"))
      .def_readonly("data", &CudaArray::data)
      .def_readonly("dtype", &CudaArray::dtype)
      .def_readonly("shape", &CudaArray::shape)
      .def_readonly("strides", &CudaArray::strides)
      .def_readonly("device", &CudaArray::device)
      .def("__repr__", [](const CudaArray& a) {
        std::ostringstream os;
        os << "CudaArray(data=0x" << std::hex << a.data << std::dec << ", dtype=" << cuda::dtype_name(a.dtype)
           << ", shape=" << shape_str(a.shape) << ", strides=" << shape_str(a.strides)
           << ", device=" << a.device << ")";
        return os.str();
      });
}

// ---------------------------------------------------------------- robust rules (csrc/rules)
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

// The caller's (b, p) exclusion mask, copied (the natives write to it), or zeros.
py::array_t<uint8_t> excluded_in(const py::object& mask, int64_t b, int64_t p, const char* fn) {
  py::array_t<uint8_t> out({b, p});
  uint8_t* o = out.mutable_data();
  if (mask.is_none()) {
    std::fill(o, o + b * p, uint8_t(0));
    return out;
  }
  U8Array m = mask.cast<U8Array>();
  FLAGCORE_CHECK_ARG(m.ndim() == 2 && m.shape(0) == b && m.shape(1) == p,
                     fn << ": excluded must be (b, p) = (" << b << ", " << p << ")");
  std::copy(m.data(), m.data() + b * p, o);
  return out;
}

// A CoordRule made from an out-of-range integer (CoordRule(7)) is refused by name.
void check_coord_rule(CoordRule rule, const char* fn) {
  const int v = static_cast<int>(rule);
  FLAGCORE_CHECK_ARG(
      v >= static_cast<int>(CoordRule::median) && v <= static_cast<int>(CoordRule::mean),
      fn << ": rule must be a CoordRule (median, trimmed_mean, meamed, phocas, mean), got the value " << v);
}

template <typename T>
py::tuple coordinate_impl(const py::object& x, CoordRule rule, int64_t f, int64_t keep,
                          const py::object& mask) {
  Rows<T> rows = make_rows<T>(x);
  check_coord_rule(rule, "coordinate");
  FLAGCORE_CHECK_ARG(f >= 0, "coordinate: f must be >= 0");
  FLAGCORE_CHECK_ARG(rows.p <= kMaxNetwork,
                     "coordinate: at most "
                         << kMaxNetwork
                         << " workers per problem for the coordinate-wise rules, got p = " << rows.p);
  CoordSpec spec;
  spec.rule = rule;
  spec.f = f;
  spec.keep = keep;
  py::array_t<T> out({rows.b, rows.n});
  py::array_t<uint8_t> excl = excluded_in(mask, rows.b, rows.p, "coordinate");
  T* o = out.mutable_data();
  uint8_t* e = excl.mutable_data();
  interruptibly([&] { coordinate_cpu<T>(rows.ptr.data(), rows.b, rows.p, rows.n, spec, o, e); });
  return py::make_tuple(out, excl);
}

// Mixed rows (b, p_out, n) = (A x) / div per problem; a worker whose column of A is all 0 is
// not read (excluded NaN/Inf rows stay out of the products).
template <typename T>
py::array mix_rows_impl(const py::object& x, const F64Array& A, const F64Array& div) {
  Rows<T> rows = make_rows<T>(x);
  FLAGCORE_CHECK_ARG(A.ndim() == 3 && A.shape(0) == rows.b && A.shape(2) == rows.p,
                     "mix_rows: matrix must be (b, p_out, p) = (" << rows.b << ", p_out, " << rows.p << ")");
  const int64_t b = rows.b, p = rows.p, po = A.shape(1), n = rows.n;
  FLAGCORE_CHECK_ARG(div.ndim() == 2 && div.shape(0) == b && div.shape(1) == po,
                     "mix_rows: div must be (b, p_out) = (" << b << ", " << po << ")");
  py::array_t<T> out({b, po, n});
  T* o = out.mutable_data();
  const double* a = A.data();
  const double* d = div.data();
  interruptibly([&] {
    std::vector<const T*> xs;
    std::vector<T> at, dt;
    std::vector<T*> outs(static_cast<size_t>(po));
    for (int64_t q = 0; q < b; ++q) {
      std::vector<int64_t> used;
      for (int64_t j = 0; j < p; ++j) {
        bool any = false;
        for (int64_t i = 0; i < po && !any; ++i) any = a[(q * po + i) * p + j] != 0.0;
        if (any) used.push_back(j);
      }
      const int64_t m = static_cast<int64_t>(used.size());
      xs.assign(static_cast<size_t>(m), nullptr);
      at.assign(static_cast<size_t>(po * m), T(0));
      for (int64_t t = 0; t < m; ++t) {
        xs[t] = rows.ptr[q * p + used[t]];
        for (int64_t i = 0; i < po; ++i) at[i * m + t] = static_cast<T>(a[(q * po + i) * p + used[t]]);
      }
      dt.assign(d + q * po, d + (q + 1) * po);
      for (int64_t i = 0; i < po; ++i) outs[i] = o + (q * po + i) * n;
      if (m == 0) {
        std::fill(o + q * po * n, o + (q + 1) * po * n, T(0));
        continue;
      }
      mix_rows_cpu<T>(xs.data(), m, at.data(), dt.data(), po, n, outs.data());
    }
  });
  return out;
}

void check_gram(const F64Array& g, int64_t extra, const char* fn) {
  FLAGCORE_CHECK_ARG(g.ndim() == 3 && g.shape(1) == g.shape(2) && g.shape(1) >= extra,
                     fn << ": gram must be (b, p, p), got shape " << shape_str(g));
}

void register_rules(py::module_& m) {
  py::enum_<CoordRule>(m, "CoordRule", "the coordinate-wise rules (csrc/rules/coordinate.hpp)")
      .value("median", CoordRule::median)
      .value("trimmed_mean", CoordRule::trimmed_mean)
      .value("meamed", CoordRule::meamed)
      .value("phocas", CoordRule::phocas)
      .value("mean", CoordRule::mean);

  m.def(
      "coordinate",
      [](const py::object& x, CoordRule rule, int64_t f, int64_t keep, const py::object& excluded) {
        return dtype_code(x) == 'f' ? coordinate_impl<float>(x, rule, f, keep, excluded)
                                    : coordinate_impl<double>(x, rule, f, keep, excluded);
      },
      py::arg("x"), py::arg("rule"), py::arg("f"), py::arg("keep"), py::arg("excluded") = py::none(),
      "coordinate-wise rule -> ((b, n), excluded (b, p))");

  m.def(
      "mix_rows",
      [](const py::object& x, const F64Array& matrix, const F64Array& div) -> py::array {
        return dtype_code(x) == 'f' ? mix_rows_impl<float>(x, matrix, div)
                                    : mix_rows_impl<double>(x, matrix, div);
      },
      py::arg("x"), py::arg("matrix"), py::arg("div"),
      "(b, p_out, n) mixed rows: out[q, i] = (sum_j matrix[q, i, j] x[q, j]) / div[q, i], in the data dtype");

  m.def(
      "coordinate_network",
      [](int pe, CoordRule rule, int t, int k) {
        FLAGCORE_CHECK_ARG(pe >= 1 && pe <= kMaxNetwork,
                           "coordinate_network: pe must be in [1, " << kMaxNetwork << "], got " << pe);
        check_coord_rule(rule, "coordinate_network");
        FLAGCORE_CHECK_ARG(t >= 0 && t <= pe,
                           "coordinate_network: t must be in [0, pe = " << pe << "], got " << t);
        FLAGCORE_CHECK_ARG(k >= 0 && k <= pe,
                           "coordinate_network: k must be in [0, pe = " << pe << "], got " << k);
        CoordCounts c;
        c.pe = pe;
        c.t = t;
        c.k = k;
        return coordinate_network(pe, rule, c);
      },
      py::arg("pe"), py::arg("rule"), py::arg("t"), py::arg("k"));

  m.def(
      "two_clusters",
      [](F64Array dist, bool overwrite) -> py::array_t<int64_t> {
        FLAGCORE_CHECK_ARG(
            dist.ndim() == 2 && dist.shape(0) == dist.shape(1),
            "two_clusters: dist must be a square (p, p) matrix, got shape " << shape_str(dist));
        const int64_t p = dist.shape(0);
        const double* dd = dist.data();
        double* work = overwrite && dist.writeable() ? dist.mutable_data() : nullptr;
        py::array_t<int64_t> labels(p);
        int64_t* l = labels.mutable_data();
        interruptibly([&] {
          // p^2 reads, Ctrl-C polled every 256 rows; refused before anything is written
          for (int64_t i = 0; i < p; ++i) {
            if ((i & 255) == 0) check_cancel();
            for (int64_t j = 0; j < p; ++j)
              FLAGCORE_CHECK_ARG(std::isfinite(dd[i * p + j]), "two_clusters: dist must be finite, got "
                                                                   << dd[i * p + j] << " at (" << i << ", "
                                                                   << j << ")");
          }
          if (work != nullptr)
            two_clusters_average_in_place(work, p, l);
          else
            two_clusters_average(dd, p, l);
        });
        return labels;
      },
      py::arg("dist"), py::arg("overwrite") = false,
      "average-linkage agglomerative clustering of a symmetric (p, p) float64 distance matrix stopped at two "
      "clusters -> (p,) int64 labels (the cluster of row 0 is 0); closest pair first, ties to the lowest (i, "
      "j); overwrite=True lets it work in dist itself (its contents are then lost) when dist is a writable "
      "C-contiguous float64 array (else it works on a copy)");

  m.def(
      "krum",
      [](const F64Array& gram, int64_t f, int64_t mm, const py::object& excluded) {
        check_gram(gram, 0, "krum");
        const int64_t b = gram.shape(0), p = gram.shape(1);
        py::array_t<double> coef({b, p}), scores({b, p});
        py::array_t<uint8_t> sel({b, p});
        py::array_t<uint8_t> excl = excluded_in(excluded, b, p, "krum");
        const double* g = gram.data();
        double *c = coef.mutable_data(), *sc = scores.mutable_data();
        uint8_t *se = sel.mutable_data(), *ex = excl.mutable_data();
        interruptibly([&] {
          for (int64_t q = 0; q < b; ++q)
            krum_cpu(g + q * p * p, p, f, mm, c + q * p, sc + q * p, se + q * p, ex + q * p);
        });
        py::dict d;
        d["coefficients"] = coef;
        d["scores"] = scores;
        d["selected"] = sel;
        d["excluded"] = excl;
        return d;
      },
      py::arg("gram"), py::arg("f"), py::arg("m"), py::arg("excluded") = py::none());

  m.def(
      "bulyan_select",
      [](const F64Array& gram, int64_t f, const py::object& excluded) {
        check_gram(gram, 0, "bulyan_select");
        const int64_t b = gram.shape(0), p = gram.shape(1);
        py::array_t<uint8_t> sel({b, p});
        py::array_t<uint8_t> excl = excluded_in(excluded, b, p, "bulyan_select");
        py::array_t<int64_t> theta(b);
        const double* g = gram.data();
        int64_t* th = theta.mutable_data();
        uint8_t *se = sel.mutable_data(), *ex = excl.mutable_data();
        interruptibly([&] {
          for (int64_t q = 0; q < b; ++q)
            th[q] = bulyan_select_cpu(g + q * p * p, p, f, se + q * p, ex + q * p);
        });
        py::dict d;
        d["selected"] = sel;
        d["excluded"] = excl;
        d["theta"] = theta;
        return d;
      },
      py::arg("gram"), py::arg("f"), py::arg("excluded") = py::none());

  m.def(
      "geometric_median",
      [](const F64Array& gram, const F64Array& nu, double tol, int64_t max_iter, const py::object& excluded) {
        check_gram(gram, 0, "geometric_median");
        const int64_t b = gram.shape(0), p = gram.shape(1);
        FLAGCORE_CHECK_ARG(nu.ndim() == 1 && nu.shape(0) == b,
                           "geometric_median: nu must be (b,) = (" << b << ",), got shape " << shape_str(nu));
        py::array_t<double> coef({b, p}), obj(b);
        py::array_t<int64_t> iters(b);
        py::array_t<uint8_t> conv(b);
        py::array_t<uint8_t> excl = excluded_in(excluded, b, p, "geometric_median");
        interruptibly([&] {
          for (int64_t q = 0; q < b; ++q)
            geometric_median_cpu(gram.data() + q * p * p, p, nu.data()[q], tol, max_iter,
                                 coef.mutable_data() + q * p, excl.mutable_data() + q * p,
                                 iters.mutable_data() + q, conv.mutable_data() + q, obj.mutable_data() + q);
        });
        py::dict d;
        d["coefficients"] = coef;
        d["objective"] = obj;
        d["iterations"] = iters;
        d["converged"] = conv;
        d["excluded"] = excl;
        return d;
      },
      py::arg("gram"), py::arg("nu"), py::arg("tol"), py::arg("max_iter"), py::arg("excluded") = py::none());

  m.def(
      "centered_clipping",
      [](const F64Array& gram, double tau, int64_t iterations, const py::object& excluded) {
        check_gram(gram, 2, "centered_clipping");
        const int64_t b = gram.shape(0), q1 = gram.shape(1), p = q1 - 1;
        py::array_t<double> coef({b, q1});
        py::array_t<uint8_t> excl = excluded_in(excluded, b, p, "centered_clipping");
        const double* g = gram.data();
        double* c = coef.mutable_data();
        uint8_t* ex = excl.mutable_data();
        interruptibly([&] {
          for (int64_t q = 0; q < b; ++q)
            centered_clipping_cpu(g + q * q1 * q1, p, tau, iterations, c + q * q1, ex + q * p);
        });
        py::dict d;
        d["coefficients"] = coef;
        d["excluded"] = excl;
        return d;
      },
      py::arg("gram"), py::arg("tau"), py::arg("iterations"), py::arg("excluded") = py::none());

  m.def(
      "nnm_matrix",
      [](const F64Array& gram, int64_t f, const py::object& excluded) {
        check_gram(gram, 0, "nnm_matrix");
        const int64_t b = gram.shape(0), p = gram.shape(1);
        py::array_t<double> mix({b, p, p});
        py::array_t<uint8_t> excl = excluded_in(excluded, b, p, "nnm_matrix");
        const double* g = gram.data();
        double* mx = mix.mutable_data();
        uint8_t* ex = excl.mutable_data();
        interruptibly([&] {
          for (int64_t q = 0; q < b; ++q) nnm_matrix_cpu(g + q * p * p, p, f, mx + q * p * p, ex + q * p);
        });
        py::dict d;
        d["matrix"] = mix;
        d["excluded"] = excl;
        return d;
      },
      py::arg("gram"), py::arg("f"), py::arg("excluded") = py::none());

  // CUDA: device arrays from the Python layer (torch tensors), launched on `stream`.
  m.def(
      "coordinate_cuda",
      [](const CudaArray& x, const CudaArray& out, const CudaArray& active_mask, const CudaArray& flags,
         CoordRule rule, int64_t f, int64_t keep, std::uintptr_t stream) {
        const char* fn = "coordinate_cuda";
        FLAGCORE_CHECK_ARG(x.shape.size() == 3, fn << ": x must be (b, p, n), got " << shape_str(x.shape));
        FLAGCORE_CHECK_ARG(x.dtype == cuda::DType::float32 || x.dtype == cuda::DType::float64,
                           fn << ": x must be float32 or float64, got " << cuda::dtype_name(x.dtype));
        const int64_t b = x.shape[0], p = x.shape[1], n = x.shape[2];
        FLAGCORE_CHECK_ARG(p >= 1 && p <= cuda::kCoordMaxP,
                           fn << ": p must be in [1, " << cuda::kCoordMaxP << "], got " << p);
        FLAGCORE_CHECK_ARG(n <= 1 || x.strides[2] == 1, fn << ": x's last axis must be contiguous");
        FLAGCORE_CHECK_ARG(b <= 65535,
                           fn << ": at most 65535 problems per call (one grid row each), got " << b);
        check_cuda_arg(out, fn, "out", x.dtype, {b, n}, x.device);
        check_cuda_arg(active_mask, fn, "active_mask", cuda::DType::int64, {b}, x.device);
        check_cuda_arg(flags, fn, "flags", cuda::DType::int32, {b, p}, x.device);
        check_coord_rule(rule, fn);
        FLAGCORE_CHECK_ARG(f >= 0, fn << ": f must be >= 0, got " << f);
#ifdef FLAGCORE_WITH_CUDA
        check_cuda_device(x.device);
        CoordSpec spec;
        spec.rule = rule;
        spec.f = f;
        spec.keep = keep;
        const auto* mask = reinterpret_cast<const uint64_t*>(active_mask.data);
        auto* fl = reinterpret_cast<int32_t*>(flags.data);
        without_gil([&] {
          if (x.dtype == cuda::DType::float64)
            cuda::coordinate_cuda<double>(reinterpret_cast<const double*>(x.data), b, p, n, x.strides[0],
                                          x.strides[1], spec, reinterpret_cast<double*>(out.data), mask, fl,
                                          stream);
          else
            cuda::coordinate_cuda<float>(reinterpret_cast<const float*>(x.data), b, p, n, x.strides[0],
                                         x.strides[1], spec, reinterpret_cast<float*>(out.data), mask, fl,
                                         stream);
        });
#else
        (void)keep;
        (void)stream;
        no_cuda();
#endif
      },
      py::arg("x"), py::arg("out"), py::arg("active_mask"), py::arg("flags"), py::kw_only(), py::arg("rule"),
      py::arg("f"), py::arg("keep"), py::arg("stream"),
      "coordinate-wise rule of a (b, p <= 64, n) float32/float64 device array into out (b, n); active_mask "
      "(b,) int64 bits of the workers taking part; flags (b, p) int32 set to 1 for an active worker holding "
      "NaN/Inf");
  m.attr("coordinate_cuda_max_p") = cuda::kCoordMaxP;
}
template <typename T>
py::tuple flag_aggregate_layers_impl(const py::list& layers, const FlagParams& prm,
                                     const std::vector<int64_t>& rs) {
  const int64_t b = static_cast<int64_t>(layers.size());
  std::vector<Rows<T>> all;
  std::vector<const T*> ptr;
  std::vector<int64_t> ps, ns;
  int64_t cols = 0;
  for (int64_t q = 0; q < b; ++q) {
    all.push_back(make_rows<T>(layers[q]));
    const Rows<T>& r = all.back();
    FLAGCORE_CHECK_ARG(r.b == 1 && r.p >= 1,
                       "flag_aggregate_layers: layers[" << q << "] must be one (p, n) stack");
    ptr.insert(ptr.end(), r.ptr.begin(), r.ptr.end());
    ps.push_back(r.p);
    ns.push_back(r.n);
    cols += r.n;
  }
  int64_t rows = static_cast<int64_t>(ptr.size());
  py::array_t<T> out(cols);
  FLAGCORE_CHECK_ARG(
      rs.empty() || static_cast<int64_t>(rs.size()) == b,
      "flag_aggregate_layers: r must be one int or one per layer (" << b << "), got " << rs.size());
  InfoArrays info(rows, b, true);
  FlagIrlsOut view = info.view();
  T* o = out.mutable_data();
  interruptibly([&] {
    flag_aggregate_ragged_cpu<T>(ptr.data(), ps.data(), ns.data(), b, prm, o, view, info.hist,
                                 rs.empty() ? nullptr : rs.data());
  });
  return py::make_tuple(out, info.to_dict());
}

py::dict plan_to_dict(const FlagCudaPlan& pl) {
  py::dict d;
  d["b"] = pl.b;
  d["rows"] = pl.rows;
  d["cols"] = pl.cols;
  d["p_max"] = pl.p_max;
  d["p_min"] = pl.p_min;
  d["parts"] = pl.parts;
  d["partials"] = pl.partials;
  d["gram"] = pl.gram;
  d["irls_ws_each"] = pl.irls_ws_each;
  d["irls_smem"] = pl.irls_smem;
  d["max_iter"] = pl.max_iter;
  d["objective_steps"] = pl.objective_steps;
  d["irls_on_host"] = pl.irls_on_host;
  d["off_gram"] = pl.off_gram;
  d["off_partials"] = pl.off_partials;
  d["off_irls"] = pl.off_irls;
  d["off_coef"] = pl.off_coef;
  d["off_weights"] = pl.off_weights;
  d["off_ratios"] = pl.off_ratios;
  d["off_objective"] = pl.off_objective;
  d["off_iterations"] = pl.off_iterations;
  d["off_rank"] = pl.off_rank;
  d["off_excluded"] = pl.off_excluded;
  d["off_rejected"] = pl.off_rejected;
  d["bytes"] = pl.bytes;
  return d;
}

// ---------------------------------------------------------------- fork-join simulator
using DArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// The simulator's Ctrl-C scope: like interruptibly(), and its poll (every ~50 ms on the calling
// thread, with the GIL) also reports progress to an optional Python callable, so the callback
// runs on the caller's thread and an exception it raises stops the run and propagates. run(f)
// runs f without the GIL inside the scope.
class SimInterruptible {
 public:
  SimInterruptible(py::object callback, const int64_t* counters, int count, int64_t total)
      : callback_(std::move(callback)),
        counters_(counters),
        count_(count),
        total_(total),
        scope_{{false}, [this] { return poll(); }},
        guard_(scope_) {}

  template <typename F>
  void run(F&& f) {
    without_gil(std::forward<F>(f));
  }

 private:
  bool poll() {
    const bool main = on_main_thread();
    const bool report =
        !callback_.is_none() && counters_ != nullptr && std::chrono::steady_clock::now() >= next_report_;
    if (!main && !report) return false;
    std::optional<InCallback> counted;
    if (!main) {
      counted.emplace();
      if (g_exiting.load()) return false;  // after this thread counted itself: at_exit waits for it
    }
    // The GIL by hand, not by an RAII guard: a thread other than the main one that runs Python
    // while the interpreter finalizes is ended by pthread_exit, even in the middle of the
    // callback, and must not then release a GIL it no longer holds (then_restore).
    const PyGILState_STATE state = PyGILState_Ensure();
    return then_restore([&] { return poll_with_gil(main, report); }, [&] { PyGILState_Release(state); });
  }
  bool poll_with_gil(bool main, bool report) {
    if (main && PyErr_CheckSignals() != 0) return true;
    if (!report) return false;
    next_report_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
    int64_t done = 0;
    for (int i = 0; i < count_; ++i) done += __atomic_load_n(counters_ + i, __ATOMIC_RELAXED);
    try {
      callback_(done, total_);
    } catch (py::error_already_set& e) {
      e.restore();  // the pending exception: raised when Cancelled reaches the translator
      return true;
    }
    return false;
  }
  py::object callback_;
  const int64_t* counters_;
  int count_;
  int64_t total_;
  std::chrono::steady_clock::time_point next_report_{};
  CancelScope scope_;
  CancelScopeGuard guard_;
};

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  return py::array_t<T>(py::ssize_t(v.size()), v.data());
}

void bind_forkjoin(py::module_& m) {
  PYBIND11_NUMPY_DTYPE(sim::BatchRow, requests, sum_response, sum_energy, sum_wasted_time, integral_in_system,
                       duration, dynamic_energy, busy_time, in_system_at_end, other_energy, other_time);

  py::enum_<sim::ServiceKind>(m, "ServiceKind", "unit-mean work distribution of the simulator")
      .value("exponential", sim::ServiceKind::exponential)
      .value("deterministic", sim::ServiceKind::deterministic)
      .value("gamma", sim::ServiceKind::gamma)
      .value("lognormal", sim::ServiceKind::lognormal)
      .value("pareto", sim::ServiceKind::pareto)
      .value("empirical", sim::ServiceKind::empirical);

  py::enum_<sim::SpeedPolicy>(m, "SpeedPolicy", "how a server picks its speed level (forkjoin_sim.hpp)")
      .value("random", sim::SpeedPolicy::random)
      .value("threshold", sim::SpeedPolicy::threshold)
      .value("deadline", sim::SpeedPolicy::deadline);

  py::class_<sim::SleepState>(m, "SleepState", "a low-power state (see csrc/sim/forkjoin_sim.hpp)")
      .def(py::init([](double after, double power, double wake_latency, double wake_power) {
             return sim::SleepState{after, power, wake_latency, wake_power};
           }),
           py::arg("after"), py::arg("power"), py::arg("wake_latency"), py::arg("wake_power"))
      .def_readwrite("after", &sim::SleepState::after)
      .def_readwrite("power", &sim::SleepState::power)
      .def_readwrite("wake_latency", &sim::SleepState::wake_latency)
      .def_readwrite("wake_power", &sim::SleepState::wake_power);

  using Cfg = sim::ForkJoinConfig;
  py::class_<Cfg>(m, "SimConfig", "parameters of one simulation (csrc/sim/forkjoin_sim.hpp)")
      .def(py::init<>())
      .def_readwrite("n", &Cfg::n)
      .def_readwrite("k", &Cfg::k)
      .def_readwrite("arrival_rate", &Cfg::arrival_rate)
      .def_readwrite("rates", &Cfg::rates)
      .def_readwrite("powers", &Cfg::powers)
      .def_readwrite("probs", &Cfg::probs)
      .def_readwrite("server_levels", &Cfg::server_levels)
      .def_readwrite("idle_power", &Cfg::idle_power)
      .def_readwrite("service", &Cfg::service)
      .def_readwrite("service_param", &Cfg::service_param)
      .def_readwrite("empirical", &Cfg::empirical)
      .def_readwrite("cancel", &Cfg::cancel)
      .def_readwrite("redraw_on_arrival", &Cfg::redraw_on_arrival)
      .def_readwrite("sleep_states", &Cfg::sleep_states)
      .def_readwrite("sleep_exponential", &Cfg::sleep_exponential)
      .def_readwrite("wake_exponential", &Cfg::wake_exponential)
      .def_readwrite("switch_energy", &Cfg::switch_energy)
      .def_readwrite("switch_time", &Cfg::switch_time)
      .def_readwrite("switch_power", &Cfg::switch_power)
      .def_readwrite("policy", &Cfg::policy)
      .def_readwrite("thresholds", &Cfg::thresholds)
      .def_readwrite("deadline", &Cfg::deadline)
      .def_readwrite("deadline_known_size", &Cfg::deadline_known_size)
      .def_readwrite("trace_arrivals", &Cfg::trace_arrivals)
      .def_readwrite("trace_sizes", &Cfg::trace_sizes)
      .def_readwrite("mmpp_rates", &Cfg::mmpp_rates)
      .def_readwrite("mmpp_switch", &Cfg::mmpp_switch)
      .def_readwrite("renewal_arrivals", &Cfg::renewal_arrivals)
      .def_readwrite("arrival_kind", &Cfg::arrival_kind)
      .def_readwrite("arrival_param", &Cfg::arrival_param)
      .def_readwrite("arrival_table", &Cfg::arrival_table)
      .def_readwrite("requests", &Cfg::requests)
      .def_readwrite("warmup", &Cfg::warmup)
      .def_readwrite("batches", &Cfg::batches)
      .def_readwrite("seed", &Cfg::seed)
      .def_readwrite("stream", &Cfg::stream)
      .def_readwrite("max_in_system", &Cfg::max_in_system);

  using Res = sim::ForkJoinResult;
  py::class_<Res>(m, "SimReplication", "raw sums of one replication (read by flagcore.energy._stats)")
      .def_readonly("measured", &Res::measured)
      .def_readonly("t_start", &Res::t_start)
      .def_readonly("t_end", &Res::t_end)
      .def_readonly("sum_response", &Res::sum_response)
      .def_readonly("min_response", &Res::min_response)
      .def_readonly("max_response", &Res::max_response)
      .def_readonly("sum_energy", &Res::sum_energy)
      .def_readonly("sum_wasted_time", &Res::sum_wasted_time)
      .def_readonly("sum_wasted_energy", &Res::sum_wasted_energy)
      .def_readonly("integral_in_system", &Res::integral_in_system)
      .def_property_readonly("busy_time", [](const Res& r) { return to_numpy(r.busy_time); })
      .def_property_readonly("busy_energy", [](const Res& r) { return to_numpy(r.busy_energy); })
      .def_property_readonly("wasted_busy_energy",
                             [](const Res& r) { return to_numpy(r.wasted_busy_energy); })
      .def_property_readonly("completions", [](const Res& r) { return to_numpy(r.completions); })
      .def_readonly("dynamic_energy_window", &Res::dynamic_energy_window)
      .def_property_readonly("sleep_time", [](const Res& r) { return to_numpy(r.sleep_time); })
      .def_property_readonly("sleep_energy", [](const Res& r) { return to_numpy(r.sleep_energy); })
      .def_readonly("wake_time", &Res::wake_time)
      .def_readonly("wake_energy", &Res::wake_energy)
      .def_readonly("wakeups", &Res::wakeups)
      .def_readonly("switches", &Res::switches)
      .def_readonly("stall_time", &Res::stall_time)
      .def_readonly("stall_energy", &Res::stall_energy)
      .def_property_readonly(
          "batch", [](const Res& r) { return py::array(to_numpy(r.batch)); },
          "one structured row per batch (named columns: sim.BatchRow)")
      .def_property_readonly("hist_batch", [](const Res& r) { return to_numpy(r.hist_batch); })
      .def_property_readonly("hist_bucket", [](const Res& r) { return to_numpy(r.hist_bucket); })
      .def_property_readonly("hist_count", [](const Res& r) { return to_numpy(r.hist_count); })
      .def_readonly("events", &Res::events)
      .def_readonly("arrivals", &Res::arrivals)
      .def_readonly("max_in_system_seen", &Res::max_in_system_seen)
      .def_readonly("aborted", &Res::aborted)
      .def_readonly("wall_seconds", &Res::wall_seconds)
      .def_readonly("cpu_seconds", &Res::cpu_seconds);

  m.def(
      "forkjoin_simulate",
      [](const Cfg& config, int replications, int threads, py::object progress) {
        FLAGCORE_CHECK_ARG(replications >= 1, "forkjoin_simulate: replications must be >= 1");
        std::vector<int64_t> counters(size_t(replications), 0);
        // in 128 bits: the config is validated only inside the call, so the sum may overflow
        const __int128 wide = (__int128(config.requests) + config.warmup) * replications;
        const int64_t total = wide > INT64_MAX ? INT64_MAX : wide < 0 ? 0 : int64_t(wide);
        std::vector<sim::ForkJoinResult> res;
        {
          SimInterruptible interruptible(progress, counters.data(), replications, total);
          interruptible.run([&] {
            res = sim::simulate_forkjoin_replications(config, replications, threads, counters.data());
          });
        }
        return res;
      },
      py::arg("config"), py::arg("replications") = 1, py::arg("threads") = 1,
      py::arg("progress") = py::none(),
      "one SimReplication per replication (streams 0..replications-1); progress(done, total), "
      "if given, is called on this thread about 10 times a second");

  m.def(
      "forkjoin_trace",
      [](int n, int k, bool cancel, const DArray& arrivals, const DArray& services) {
        FLAGCORE_CHECK_ARG(arrivals.ndim() == 1, "forkjoin_trace: arrivals must be one-dimensional");
        const py::ssize_t R = arrivals.shape(0);
        FLAGCORE_CHECK_ARG(services.ndim() == 2 && services.shape(0) == R && services.shape(1) == n,
                           "forkjoin_trace: services must be (requests, n) = (" << R << ", " << n << ")");
        py::array_t<double> dep(R), busy(R), wasted(R);
        const double* a = arrivals.data();
        const double* s = services.data();
        double *pd = dep.mutable_data(), *pb = busy.mutable_data(), *pw = wasted.mutable_data();
        interruptibly([&] { sim::simulate_forkjoin_trace(n, k, cancel, int64_t(R), a, s, pd, pb, pw); });
        return py::make_tuple(dep, busy, wasted);
      },
      py::arg("n"), py::arg("k"), py::arg("cancel"), py::arg("arrivals"), py::arg("services"));

  m.def("sim_histogram_layout", []() {
    py::dict d;
    d["sub_bits"] = sim::LogHistogramLayout::kSubBits;
    d["emin"] = sim::LogHistogramLayout::kEmin;
    d["emax"] = sim::LogHistogramLayout::kEmax;
    d["buckets"] = sim::LogHistogramLayout::kBuckets;
    return d;
  });
  m.def(
      "sim_histogram_index",
      [](const DArray& x) {
        py::array_t<int64_t> out(x.size());
        for (py::ssize_t i = 0; i < x.size(); ++i)
          out.mutable_data()[i] = sim::LogHistogramLayout::index(x.data()[i]);
        return out;
      },
      py::arg("x"));
  m.def(
      "sim_philox",
      [](std::vector<uint32_t> ctr, std::vector<uint32_t> key) {
        FLAGCORE_CHECK_ARG(ctr.size() == 4 && key.size() == 2, "sim_philox: ctr has 4 words, key 2");
        uint32_t out[4];
        sim::philox4x32_10(ctr.data(), key.data(), out);
        return std::vector<uint32_t>(out, out + 4);
      },
      py::arg("ctr"), py::arg("key"));
  m.def(
      "sim_log",
      [](const DArray& x) {
        py::array_t<double> out(x.size());
        sim::det_log_cpu(x.data(), int64_t(x.size()), out.mutable_data());
        return out;
      },
      py::arg("x"));
  m.def(
      "sim_exp",
      [](const DArray& x) {
        py::array_t<double> out(x.size());
        sim::det_exp_cpu(x.data(), int64_t(x.size()), out.mutable_data());
        return out;
      },
      py::arg("x"));
  m.def(
      "sim_sample",
      [](int kind, double param, std::vector<double> table, uint64_t seed, uint64_t stream, int64_t count) {
        FLAGCORE_CHECK_ARG(kind >= 0 && kind <= 5, "sim_sample: unknown kind " << kind);
        FLAGCORE_CHECK_ARG(kind != 5 || !table.empty(), "sim_sample: empirical needs a table");
        py::array_t<double> out(count);
        double* o = out.mutable_data();
        interruptibly([&] {
          sim::sample_service_cpu(static_cast<sim::ServiceKind>(kind), param, table.data(), table.size(),
                                  seed, stream, count, o);
        });
        return out;
      },
      "unit-mean service samples (kind: 0 exponential, 1 deterministic, 2 gamma, 3 lognormal, 4 pareto, 5 "
      "empirical)",
      py::arg("kind"), py::arg("param"), py::arg("table"), py::arg("seed"), py::arg("stream"),
      py::arg("count"));
}
}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "flagcore native core (private: use the flagcore package)";
  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  m.def("_at_exit", &at_exit,
        "flagcore's atexit hook: native calls on other threads stop calling into Python (registered by "
        "flagcore._backend)");
  register_cuda_types(m);

  // An interrupted native call raises the KeyboardInterrupt that its poll found pending.
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const Cancelled&) {
      if (PyErr_Occurred() == nullptr) PyErr_SetNone(PyExc_KeyboardInterrupt);
    }
  });

  m.def("build_info", []() {
    py::dict d;
    d["version"] = FLAGCORE_VERSION;
#ifdef FLAGCORE_WITH_CUDA
    d["cuda_compiled"] = true;
    std::string archs = FLAGCORE_CUDA_ARCHS;
    py::list al;
    size_t start = 0;
    while (start <= archs.size()) {
      size_t end = archs.find(',', start);
      if (end == std::string::npos) end = archs.size();
      if (end > start) al.append(archs.substr(start, end - start));
      start = end + 1;
    }
    d["cuda_architectures"] = al;
#else
    d["cuda_compiled"] = false;
    d["cuda_architectures"] = py::list();
#endif
    d["simd_supported"] = simd_level_name(simd_level_supported());
    d["amx_supported"] = gram_amx_cpu();
    d["blas"] = blas::library_name();
    d["libstdcxx"] = libstdcxx_kind();
    d["compiler"] =
#if defined(__clang__)
        std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        std::string("gcc ") + __VERSION__;
#else
        std::string("unknown");
#endif
    return d;
  });

  m.def("cuda_device_count", []() -> int {
#ifdef FLAGCORE_WITH_CUDA
    return cuda::device_count();
#else
    return 0;
#endif
  });

  m.def(
      "cuda_selftest_saxpy",
      [](float a, py::array_t<float, py::array::c_style | py::array::forcecast> x,
         py::array_t<float, py::array::c_style | py::array::forcecast> y) -> py::array_t<float> {
#ifdef FLAGCORE_WITH_CUDA
        FLAGCORE_CHECK_ARG(x.size() == y.size(), "cuda_selftest_saxpy: x and y differ in size");
        py::array_t<float> out(y.size());
        std::copy(y.data(), y.data() + y.size(), out.mutable_data());
        {
          without_gil(
              [&] { cuda::selftest_saxpy(a, x.data(), out.mutable_data(), static_cast<int64_t>(x.size())); });
        }
        return out;
#else
        (void)a;
        (void)x;
        (void)y;
        throw std::runtime_error(
            "flagcore was not compiled with GPU support (FLAGCORE_CUDA=OFF or no nvcc at build time)");
#endif
      },
      py::arg("a"), py::arg("x"), py::arg("y"));

  m.def("num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("simd_level", []() { return simd_level_name(simd_level()); });
  m.def("set_simd_level", &set_simd_level, py::arg("name"));
  m.def("gram_amx", &gram_amx_wanted,
        "Whether the float32 Gram is to use AMX tiles (the CPU has them, simd level avx512, not switched "
        "off); the OS grant is asked at the first Gram that uses them, and the FMA kernels run if refused.");
  m.def("set_gram_amx", &set_gram_amx, py::arg("mode"),
        "The float32 Gram's use of AMX tiles: 'auto' (where it measured faster), 'on' (every p > 32; "
        "ValueError where unsupported) or 'off'.");

  m.def("set_gram_packed_shared", &set_gram_packed_shared, py::arg("mode"),
        "Tests: 'on' runs the AVX2 packed Gram kernel through the AVX-512 kernel's shared-slice "
        "driver from p = 512 (as on AVX-512), 'auto' gives each kernel its own driver.");

  m.def(
      "gram",
      [](const py::object& x) -> py::array {
        return dtype_code(x) == 'f' ? gram_impl<float>(x) : gram_impl<double>(x);
      },
      py::arg("x"), "(b, p, n) or list of p (n,) float32/float64 -> (b, p, p) float64 Gram matrices");

  m.def(
      "weighted_sum",
      [](const py::object& x,
         const py::array_t<double, py::array::c_style | py::array::forcecast>& coef) -> py::array {
        return dtype_code(x) == 'f' ? weighted_sum_impl<float>(x, coef) : weighted_sum_impl<double>(x, coef);
      },
      py::arg("x"), py::arg("coef"),
      "sum_i coef[q, i] * x[q, i, :] in float64, output in x's dtype; rows with coef 0 are not read");

  m.def(
      "reference_products",
      [](const py::object& x, const py::array_t<double, py::array::c_style | py::array::forcecast>& ref,
         bool diag) -> py::tuple {
        return dtype_code(x) == 'f' ? reference_products_impl<float>(x, ref, diag)
                                    : reference_products_impl<double>(x, ref, diag);
      },
      py::arg("x"), py::arg("ref"), py::arg("diag") = false,
      "(b, p, n) or list of p (n,) float32/float64 and a (b, n) float64 reference -> ((b, p) x_i . ref, (b,) "
      "ref . ref, (b, p) x_i . x_i or None without diag), float64 products and sums in an order fixed by n");

  m.def(
      "row_squares",
      [](const py::object& x) -> py::array {
        return dtype_code(x) == 'f' ? row_squares_impl<float>(x) : row_squares_impl<double>(x);
      },
      py::arg("x"),
      "(b, p, n) or list of p (n,) float32/float64 -> (b, p) squared norms x_i . x_i, float64 "
      "products and sums in the order of reference_products");

  m.def(
      "gather_columns",
      [](const py::object& x,
         const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& cols) -> py::array {
        return dtype_code(x) == 'f' ? gather_columns_impl<float>(x, cols)
                                    : gather_columns_impl<double>(x, cols);
      },
      py::arg("x"), py::arg("cols"),
      "(b, p, n) or list of p (n,) float32/float64 and (k,) column indices in [0, n) -> (b, p, k) float64 "
      "x[:, :, cols], on flagcore's threads");

  py::class_<FlagParams>(m, "FlagParams",
                         "The Flag Aggregator's parameters, validated once: r, lam, max_iter, eps, tol, "
                         "scale ('paper' or 'median_norm'); read-only")
      .def(py::init([](int64_t r, double lam, int max_iter, double eps, double tol,
                       const std::string& scale) { return make_params(r, lam, max_iter, eps, tol, scale); }),
           py::kw_only(), py::arg("r"), py::arg("lam") = 0.0, py::arg("max_iter") = 1, py::arg("eps") = 1e-7,
           py::arg("tol") = 1e-10, py::arg("scale") = "paper")
      .def_readonly("r", &FlagParams::r)
      .def_readonly("lam", &FlagParams::lam)
      .def_readonly("max_iter", &FlagParams::max_iter)
      .def_readonly("eps", &FlagParams::eps)
      .def_readonly("tol", &FlagParams::tol)
      .def_property_readonly(
          "scale", [](const FlagParams& p) { return std::string(p.scale == 0 ? "paper" : "median_norm"); })
      .def("__repr__", [](const FlagParams& p) {
        std::ostringstream os;
        os << "FlagParams(r=" << p.r << ", lam=" << p.lam << ", max_iter=" << p.max_iter << ", eps=" << p.eps
           << ", tol=" << p.tol << ", scale='" << (p.scale == 0 ? "paper" : "median_norm") << "')";
        return os.str();
      });

  m.def(
      "flag_irls",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& gram, const FlagParams& prm,
         int threads) {
        FLAGCORE_CHECK_ARG(gram.ndim() == 3 && gram.shape(1) == gram.shape(2),
                           "flag_irls: gram must be (b, p, p)");
        const int64_t b = gram.shape(0), p = gram.shape(1);
        InfoArrays info(b, p);
        FlagIrlsOut view = info.view();
        const double* g = gram.data();
        interruptibly([&] {
          if (threads <= 1)
            flag_irls_batch_cpu(g, b, p, prm, view, info.hist);
          else  // each problem run by a team of CPU threads with a barrier, as a CUDA block runs it
            flag_irls_team_emulation_cpu(g, b, p, prm, view, info.hist, threads);
        });
        return info.to_dict();
      },
      py::arg("gram"), py::arg("params"), py::arg("team_threads") = 1,
      "IRLS on b float64 (p, p) Gram matrices; team_threads > 1 runs each problem as a team of threads "
      "(tests)");

  m.def(
      "eigh_top",
      [](const F64Array& a, int want) -> py::tuple {
        FLAGCORE_CHECK_ARG(
            a.ndim() == 2 && a.shape(0) == a.shape(1) && a.shape(0) >= 1 && a.shape(0) <= 46340,
            "eigh_top: a must be a square (p, p) matrix with 1 <= p <= 46340, got shape " << shape_str(a));
        const int p = static_cast<int>(a.shape(0));
        FLAGCORE_CHECK_ARG(want >= 1 && want <= p,
                           "eigh_top: want must be in [1, " << p << "], got " << want);
        py::array_t<double> evals(want), evecs({p, p});
        std::fill(evecs.mutable_data(), evecs.mutable_data() + int64_t(p) * p, 0.0);
        interruptibly([&] { blas::eigh_top(a.data(), p, want, evals.mutable_data(), evecs.mutable_data()); });
        py::object top = evecs[py::make_tuple(py::slice(0, p, 1), py::slice(0, want, 1))];
        return py::make_tuple(evals, top);
      },
      py::arg("a"), py::arg("want"),
      "top `want` eigenpairs (descending values, vectors as columns) of a symmetric float64 matrix by the "
      "FA's host LAPACK path (tests)");

  m.def(
      "symv",
      [](const F64Array& a, const F64Array& x) -> py::array_t<double> {
        FLAGCORE_CHECK_ARG(
            a.ndim() == 2 && a.shape(0) == a.shape(1) && a.shape(0) >= 1 && a.shape(0) <= 46340,
            "symv: a must be a square (p, p) float64 matrix with 1 <= p <= 46340, got shape "
                << shape_str(a));
        const int p = static_cast<int>(a.shape(0));
        FLAGCORE_CHECK_ARG(x.ndim() == 1 && x.shape(0) == p,
                           "symv: x must be a (" << p << ",) vector, got shape " << shape_str(x));
        py::array_t<double> y(p);
        interruptibly([&] { blas::symv(a.data(), p, x.data(), y.mutable_data()); });
        return y;
      },
      py::arg("a"), py::arg("x"),
      "A x for a symmetric (p, p) float64 matrix, reading its upper triangle only (row-major), in an order "
      "fixed by p (and the SIMD level and OpenBLAS's CPU kernel): the same bits for every thread count");

  m.def(
      "flag_aggregate_layers",
      [](const py::list& layers, const std::vector<int64_t>& r, const FlagParams& params) {
        FLAGCORE_CHECK_ARG(!r.empty(), "flag_aggregate_layers: r must hold one value per layer");
        for (int64_t v : r) FLAGCORE_CHECK_ARG(v >= 1, "flag_aggregate_layers: r must be >= 1, got " << v);
        FlagParams prm = params;
        prm.r = r[0];
        FLAGCORE_CHECK_ARG(layers.size() > 0, "flag_aggregate_layers: no layers");
        return dtype_code(layers[0]) == 'f' ? flag_aggregate_layers_impl<float>(layers, prm, r)
                                            : flag_aggregate_layers_impl<double>(layers, prm, r);
      },
      py::arg("layers"), py::arg("r"), py::arg("params"),
      "list of (1, p_q, n_q) float32/float64 stacks (one dtype), r per layer -> (concatenated aggregates "
      "[sum n], info dict with per-worker arrays [sum p] and per-problem arrays [b])");

  m.def(
      "flag_cuda_plan",
      [](const std::vector<int64_t>& ps, const std::vector<int64_t>& ns, int max_iter) {
        FLAGCORE_CHECK_ARG(ps.size() == ns.size() && !ps.empty(),
                           "flag_cuda_plan: ps and ns must be non-empty and of one length");
        const int64_t b = static_cast<int64_t>(ps.size());
        py::array_t<int64_t> meta({b, int64_t(kMetaCols)});
        FlagCudaPlan pl = flag_cuda_plan(ps.data(), ns.data(), b, max_iter, meta.mutable_data());
        py::dict d = plan_to_dict(pl);
        d["meta"] = meta;
        return d;
      },
      py::arg("ps"), py::arg("ns"), py::arg("max_iter"),
      "workspace layout of a ragged batch for the CUDA path (host only)");

  m.def(
      "flag_cuda_plan_uniform",
      [](int64_t b, int64_t p, int64_t n, int max_iter) {
        return plan_to_dict(flag_cuda_plan_uniform(b, p, n, max_iter));
      },
      py::arg("b"), py::arg("p"), py::arg("n"), py::arg("max_iter"),
      "workspace layout of a (b, p, n) batch for the CUDA path (host only)");

  m.def(
      "flag_aggregate_cuda_uniform",
      [](const CudaArray& x, const CudaArray& out, const CudaArray& ws, const FlagParams& prm,
         std::uintptr_t stream, cuda::GramKernel kernel) {
        const char* fn = "flag_aggregate_cuda_uniform";
        FLAGCORE_CHECK_ARG(x.shape.size() == 3, fn << ": x must be (b, p, n), got " << shape_str(x.shape));
        check_fa_dtype(x.dtype, fn, "x");
        const int64_t b = x.shape[0], p = x.shape[1], n = x.shape[2];
        FLAGCORE_CHECK_ARG(n <= 1 || x.strides[2] == 1, fn << ": x's last axis must be contiguous");
        check_cuda_arg(out, fn, "out", x.dtype, {b, n}, x.device);
        check_gram_kernel(kernel, fn);
        FlagCudaPlan plan = flag_cuda_plan_uniform(b, p, n, prm.max_iter);
        check_workspace(ws, fn, plan, x.device);
#ifdef FLAGCORE_WITH_CUDA
        check_cuda_device(x.device);
        cuda::DeviceProblems d;
        d.b = b;
        d.base = reinterpret_cast<const void*>(x.data);
        d.stride_b = x.strides[0];
        d.stride_p = x.strides[1];
        d.p = p;
        d.n = n;
        d.p_max = p;
        d.rows = plan.rows;
        d.parts = plan.parts;
        const int64_t es = cuda::dtype_size(x.dtype);
        d.aligned16 = x.data % 16 == 0 && (d.stride_b * es) % 16 == 0 && (d.stride_p * es) % 16 == 0;
        check_cuda_fa_call(fn, plan, prm, kernel, d.aligned16);
        without_gil([&] {
          cuda::flag_aggregate_cuda(d, x.dtype, plan, prm, reinterpret_cast<void*>(out.data),
                                    reinterpret_cast<unsigned char*>(ws.data), stream, x.device, kernel);
        });
#else
        (void)stream;
        no_cuda();
#endif
      },
      py::arg("x"), py::arg("out"), py::arg("ws"), py::arg("params"), py::kw_only(), py::arg("stream"),
      py::arg_v("kernel", cuda::GramKernel::automatic, "GramKernel.automatic"),
      "FA of a (b, p, n) float32/float16/bfloat16 device array (last axis contiguous) into out (b, n); the "
      "IRLS outputs in ws (uint8, flag_cuda_plan_uniform(b, p, n, max_iter)['bytes'] at least)");

  m.def(
      "flag_aggregate_cuda_ragged",
      [](const CudaArray& table, const CudaArray& out, const CudaArray& ws, const FlagParams& prm,
         const std::vector<int64_t>& ps, const std::vector<int64_t>& ns, bool aligned16,
         std::uintptr_t stream, cuda::GramKernel kernel) {
        const char* fn = "flag_aggregate_cuda_ragged";
        FLAGCORE_CHECK_ARG(ps.size() == ns.size() && !ps.empty(),
                           fn << ": ps and ns must be non-empty and of one length");
        const int64_t b = static_cast<int64_t>(ps.size());
        FlagCudaPlan plan = flag_cuda_plan(ps.data(), ns.data(), b, prm.max_iter, nullptr);
        check_fa_dtype(out.dtype, fn, "out");
        check_cuda_arg(table, fn, "table", cuda::DType::int64, {b * kMetaCols + plan.rows}, table.device);
        check_cuda_arg(out, fn, "out", out.dtype, {plan.cols}, table.device);
        check_gram_kernel(kernel, fn);
        check_workspace(ws, fn, plan, table.device);
#ifdef FLAGCORE_WITH_CUDA
        check_cuda_device(table.device);
        cuda::DeviceProblems d;
        d.b = b;
        d.table = reinterpret_cast<const int64_t*>(table.data);
        d.p_max = plan.p_max;
        d.rows = plan.rows;
        d.parts = plan.parts;
        d.aligned16 = aligned16;
        check_cuda_fa_call(fn, plan, prm, kernel, aligned16);
        without_gil([&] {
          cuda::flag_aggregate_cuda(d, out.dtype, plan, prm, reinterpret_cast<void*>(out.data),
                                    reinterpret_cast<unsigned char*>(ws.data), stream, table.device, kernel);
        });
#else
        (void)aligned16;
        (void)stream;
        no_cuda();
#endif
      },
      py::arg("table"), py::arg("out"), py::arg("ws"), py::arg("params"), py::kw_only(), py::arg("ps"),
      py::arg("ns"), py::arg("aligned16"), py::arg("stream"),
      py::arg_v("kernel", cuda::GramKernel::automatic, "GramKernel.automatic"),
      "FA of a ragged batch (problem q: ps[q] rows of ns[q] elements, all of out's dtype) into out (sum "
      "ns,); "
      "table = device int64 [b*7 meta (flag_cuda_plan) | row addresses]; aligned16: every row starts on 16 "
      "bytes");

  m.def(
      "flag_irls_cuda",
      [](const CudaArray& gram, const CudaArray& ws, const FlagParams& prm, std::uintptr_t stream) {
        const char* fn = "flag_irls_cuda";
        FLAGCORE_CHECK_ARG(gram.shape.size() == 3 && gram.shape[1] == gram.shape[2],
                           fn << ": gram must be (b, p, p), got " << shape_str(gram.shape));
        const int64_t b = gram.shape[0], p = gram.shape[1];
        check_cuda_arg(gram, fn, "gram", cuda::DType::float64, {b, p, p}, gram.device);
        FlagCudaPlan plan = flag_cuda_plan_uniform(b, p, 0, prm.max_iter);
        check_workspace(ws, fn, plan, gram.device);
#ifdef FLAGCORE_WITH_CUDA
        check_cuda_device(gram.device);
        check_cuda_fa_call(fn, plan, prm, cuda::GramKernel::automatic, true);
        without_gil([&] {
          cuda::flag_irls_only_cuda(reinterpret_cast<const double*>(gram.data), b, p, plan, prm,
                                    reinterpret_cast<unsigned char*>(ws.data), stream, gram.device);
        });
#else
        (void)stream;
        no_cuda();
#endif
      },
      py::arg("gram"), py::arg("ws"), py::arg("params"), py::kw_only(), py::arg("stream"),
      "the IRLS alone on a float64 (b, p, p) device array of Gram matrices; outputs in ws at "
      "flag_cuda_plan_uniform(b, p, 0, max_iter)'s offsets");

  m.def(
      "flag_aggregate",
      [](const py::object& x, const FlagParams& prm) {
        return dtype_code(x) == 'f' ? flag_aggregate_impl<float>(x, prm)
                                    : flag_aggregate_impl<double>(x, prm);
      },
      py::arg("x"), py::arg("params"));

  register_rules(m);
  bind_forkjoin(m);
}
