// twinlora's CPU kernels for MLX: the element-wise ops where MLX's CPU backend is slowest.
//
// On an x86 CPU MLX runs its element-wise ops one float at a time on one thread (its SIMD types
// have width 1 off Apple silicon, and only BLAS uses more than one thread): `exp` costs ~15 ns per
// float against ~3 for torch (docs/benchmark-cpu.md). The ops below are MLX primitives (they sit in
// MLX's graph, with their own vector-Jacobian products) whose loops g++ vectorises for this machine
// (-march=native) and split over the cores (MLX's ThreadPool):
//   silu_mul(g, u)     = silu(g)·u, mlx-lm's `swiglu` (llama, qwen2, qwen3 MLPs); its backward
//                        (dg, du) in one pass;
//   gelu_approx(x)     mlx's nn.gelu_approx (Gemma 3's MLP), as x·σ(2z); its backward;
//   rms_norm(x, w, e)  mx.fast.rms_norm (its CPU backward is a chain of scalar MLX ops); the
//                        backward w.r.t. x in one pass per row;
//   logsumexp(x)       over the last axis (the loss's log-softmax normaliser); its backward
//                        exp(x − lse)·c;
//   softmax(x, causal) over the last axis, the attention's (a causal mask applied inside, so no
//                        L×L mask is built or added); its backward p·(g − Σ g·p).
// Inputs are float32 and row-contiguous (the Python side falls back to MLX's own ops otherwise).
// The exponential is Cephes' expf (range reduction to [−ln2/2, ln2/2], degree-5 polynomial),
// ~1e-7 relative error, written without libm calls so it vectorises.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <future>
#include <thread>
#include <typeinfo>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/threadpool.h"
#include "mlx/version.h"

namespace nb = nanobind;
using namespace mlx::core;

namespace {

inline float fast_exp(float x) {
  float keep = x < -87.0f ? 0.0f : 1.0f;               // e^x below 2^-126 is zero (a masked key: exactly)
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);   // a NaN passes through (both compares false)
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   // round to nearest (1.5·2^23)
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;                // x − n·ln2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;              // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale * keep;
}

// Each loop below takes __restrict pointers: without them g++ reloads every pointer per element.
void silu_mul_rows(const float* __restrict g, const float* __restrict u, float* __restrict out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float x = g[i];
    out[i] = x / (1.0f + fast_exp(-x)) * u[i];
  }
}

void silu_mul_grad_rows(const float* __restrict g, const float* __restrict u, const float* __restrict c,
                        float* __restrict dg, float* __restrict du, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float x = g[i];
    float sig = 1.0f / (1.0f + fast_exp(-x));
    float silu = x * sig;
    du[i] = c[i] * silu;
    dg[i] = c[i] * u[i] * (sig + silu * (1.0f - sig));
  }
}

// mlx's nn.gelu_approx, 0.5·x·(1 + tanh(z)) with z = √(2/π)·(x + 0.044715·x³), written as x·σ(2z)
constexpr float GELU_2K = 2.0f * 0.7978845608028654f, GELU_C = 0.044715f;

void gelu_approx_rows(const float* __restrict x, float* __restrict out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    out[i] = v / (1.0f + fast_exp(-GELU_2K * (v + GELU_C * v * v * v)));
  }
}

void gelu_approx_grad_rows(const float* __restrict x, const float* __restrict c, float* __restrict dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    float sig = 1.0f / (1.0f + fast_exp(-GELU_2K * (v + GELU_C * v * v * v)));
    dx[i] = c[i] * (sig + v * sig * (1.0f - sig) * GELU_2K * (1.0f + 3.0f * GELU_C * v * v));
  }
}

// mx.fast.rms_norm of one row: x·w / sqrt(mean(x²) + eps); its backward w.r.t. x,
// r·(g − x̂·mean(g·x̂)) with g = c·w, x̂ = x·r, r = 1/sqrt(mean(x²) + eps)
inline float rms_of(const float* __restrict x, int64_t n, float eps) {
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  return 1.0f / std::sqrt(ss / float(n) + eps);
}

void rms_norm_row(const float* __restrict x, const float* __restrict w, float* __restrict out, int64_t n, float eps) {
  float r = rms_of(x, n, eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

void rms_norm_grad_row(const float* __restrict x, const float* __restrict w, const float* __restrict c,
                       float* __restrict dx, int64_t n, float eps) {
  float r = rms_of(x, n, eps);
  float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += c[i] * w[i] * x[i] * r;
  dot /= float(n);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = r * (c[i] * w[i] - x[i] * r * dot);
}

float logsumexp_row(const float* __restrict x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  if (m == -INFINITY || m == INFINITY) return m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += fast_exp(x[i] - m);
  return m + std::log(sum);
}

void exp_shift_scale_row(const float* __restrict x, float* __restrict out, int64_t n, float shift, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = fast_exp(x[i] - shift) * scale;
}

// softmax of the first `n` entries of a row (the rest, a causal mask's future keys, are zero)
void softmax_row(const float* __restrict x, float* __restrict out, int64_t n, int64_t width) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  float sum = 0.0f;
  if (m == -INFINITY) m = 0.0f;            // every key masked: exp(-inf) = 0 below, the row stays zero
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = fast_exp(x[i] - m);
    sum += out[i];
  }
  float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] *= inv;
  for (int64_t i = n; i < width; ++i) out[i] = 0.0f;
}

// the softmax's backward: p·(g − Σ g·p) over the first `n` entries (zero beyond)
void softmax_grad_row(const float* __restrict p, const float* __restrict g, float* __restrict out, int64_t n,
                      int64_t width) {
  float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += p[i] * g[i];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = p[i] * (g[i] - dot);
  for (int64_t i = n; i < width; ++i) out[i] = 0.0f;
}

// Threads: OMP_NUM_THREADS when set (what twinlora's --threads and the benchmarks set for torch and
// OpenBLAS), else the machine's cores. The helpers are MLX's own ThreadPool, whose idle threads
// sleep on a condition variable: OpenMP's spin between kernels on the cores OpenBLAS's matmuls
// need (a 4 × 256-token step on 2 cores: 5.2 s spinning, 3.9 s with OMP_WAIT_POLICY=PASSIVE), and
// its policy cannot be set once torch has loaded its libgomp.
int& thread_count() {
  static int n = [] {
    const char* env = std::getenv("OMP_NUM_THREADS");
    int from_env = env ? std::atoi(env) : 0;
    return from_env > 0 ? from_env : std::max(1, int(std::thread::hardware_concurrency()));
  }();
  return n;
}

ThreadPool& helpers() {
  static ThreadPool* pool = new ThreadPool(std::max(1, thread_count() - 1));   // never destroyed: no join at exit
  return *pool;
}

// body(a, b) over [0, n) in at most one piece per thread, none smaller than `grain` elements; the
// calling thread (MLX's stream worker) runs the first piece.
template <class F>
void in_parallel(int64_t n, int64_t grain, F body) {
  int64_t pieces = std::max<int64_t>(1, std::min<int64_t>(thread_count(), n / std::max<int64_t>(grain, 1)));
  if (pieces == 1) {
    body(0, n);
    return;
  }
  std::vector<std::future<void>> rest;
  for (int64_t p = 1; p < pieces; ++p)
    rest.push_back(helpers().enqueue([=] { body(n * p / pieces, n * (p + 1) / pieces); }));
  body(0, n / pieces);
  for (auto& f : rest) f.get();
}

constexpr int64_t ELEMENT_GRAIN = 1 << 15;

// rows per piece for row-wise kernels: about ELEMENT_GRAIN elements
int64_t row_grain(int64_t width) {
  return std::max<int64_t>(1, ELEMENT_GRAIN / std::max<int64_t>(width, 1));
}

[[noreturn]] void cpu_only(const char* name) {
  throw std::runtime_error(std::string(name) + ": twinlora's kernels run on the CPU only");
}

// What every kernel below shares: CPU only; equal to another of its kind when their one parameter
// (eps, causal, or none) is; `launch` allocates the outputs, hands the arrays to MLX's CPU encoder and
// runs body(a, b) over [0, n) in parallel on the stream's worker.
class CpuKernel : public Primitive {
 public:
  CpuKernel(Stream s, float param = 0.0f) : Primitive(s), param_(param) {}
  void eval_gpu(const std::vector<array>&, std::vector<array>&) override { cpu_only(name()); }
  bool is_equivalent(const Primitive& other) const override {
    return typeid(*this) == typeid(other) && param_ == static_cast<const CpuKernel&>(other).param_;
  }

 protected:
  float param_;

  static void allocate(std::vector<array>& out) {
    for (auto& o : out) o.set_data(allocator::malloc(o.nbytes()));
  }
  template <class F>
  void launch(const std::vector<array>& in, std::vector<array>& out, int64_t n, int64_t grain, F body) {
    auto& enc = cpu::get_command_encoder(stream());
    for (auto& a : in) enc.set_input_array(a);
    for (auto& o : out) enc.set_output_array(o);
    enc.dispatch([=] { in_parallel(n, grain, body); });
  }
};

std::vector<array> silu_mul_grad(const array& g, const array& u, const array& c, Stream s);
array gelu_approx_grad(const array& x, const array& c, Stream s);
array rms_norm_grad(const array& x, const array& w, const array& c, float eps, Stream s);
array exp_shift_scale(const array& x, const array& lse, const array& c, Stream s);
array softmax_grad(const array& p, const array& g, bool causal, Stream s);

class SiluMul : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    auto g = in[0].data<float>(), u = in[1].data<float>();
    auto o = out[0].data<float>();
    launch(in, out, out[0].size(), ELEMENT_GRAIN, [=](int64_t a, int64_t b) { silu_mul_rows(g + a, u + a, o + a, b - a); });
  }
  std::vector<array> vjp(const std::vector<array>& primals, const std::vector<array>& cotangents,
                         const std::vector<int>& argnums, const std::vector<array>&) override {
    auto grads = silu_mul_grad(primals[0], primals[1], cotangents[0], stream());
    std::vector<array> out;
    for (int a : argnums) out.push_back(grads[a]);
    return out;
  }
  const char* name() const override { return "TwinloraSiluMul"; }
};

class SiluMulGrad : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    auto g = in[0].data<float>(), u = in[1].data<float>(), c = in[2].data<float>();
    auto dg = out[0].data<float>(), du = out[1].data<float>();
    launch(in, out, in[0].size(), ELEMENT_GRAIN,
           [=](int64_t a, int64_t b) { silu_mul_grad_rows(g + a, u + a, c + a, dg + a, du + a, b - a); });
  }
  const char* name() const override { return "TwinloraSiluMulGrad"; }
};

class GeluApprox : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    auto x = in[0].data<float>();
    auto o = out[0].data<float>();
    launch(in, out, out[0].size(), ELEMENT_GRAIN, [=](int64_t a, int64_t b) { gelu_approx_rows(x + a, o + a, b - a); });
  }
  std::vector<array> vjp(const std::vector<array>& primals, const std::vector<array>& cotangents,
                         const std::vector<int>&, const std::vector<array>&) override {
    return {gelu_approx_grad(primals[0], cotangents[0], stream())};
  }
  const char* name() const override { return "TwinloraGeluApprox"; }
};

class GeluApproxGrad : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    auto x = in[0].data<float>(), c = in[1].data<float>();
    auto o = out[0].data<float>();
    launch(in, out, out[0].size(), ELEMENT_GRAIN,
           [=](int64_t a, int64_t b) { gelu_approx_grad_rows(x + a, c + a, o + a, b - a); });
  }
  const char* name() const override { return "TwinloraGeluApproxGrad"; }
};

// param_: eps
class RmsNorm : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    int64_t width = in[0].shape(-1);
    auto x = in[0].data<float>(), w = in[1].data<float>();
    auto o = out[0].data<float>();
    float eps = param_;
    launch(in, out, in[0].size() / width, row_grain(width), [=](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) rms_norm_row(x + r * width, w, o + r * width, width, eps);
    });
  }
  std::vector<array> vjp(const std::vector<array>& primals, const std::vector<array>& cotangents,
                         const std::vector<int>& argnums, const std::vector<array>&) override {
    auto& x = primals[0];
    auto& c = cotangents[0];
    std::vector<array> out;
    for (int a : argnums) {
      if (a == 0) {
        out.push_back(rms_norm_grad(x, primals[1], c, param_, stream()));
      } else {                             // the weight (a trainable norm): Σ over rows of c·x̂, in MLX ops
        auto s = stream();
        auto r = rsqrt(add(mean(square(x, s), -1, true, s), array(param_, float32), s), s);
        auto rows = std::vector<int>();
        for (int i = 0; i < x.ndim() - 1; ++i) rows.push_back(i);
        out.push_back(sum(multiply(c, multiply(x, r, s), s), rows, false, s));
      }
    }
    return out;
  }
  const char* name() const override { return "TwinloraRmsNorm"; }
};

class RmsNormGrad : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    int64_t width = in[0].shape(-1);
    auto x = in[0].data<float>(), w = in[1].data<float>(), c = in[2].data<float>();
    auto o = out[0].data<float>();
    float eps = param_;
    launch(in, out, in[0].size() / width, row_grain(width), [=](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) rms_norm_grad_row(x + r * width, w, c + r * width, o + r * width, width, eps);
    });
  }
  const char* name() const override { return "TwinloraRmsNormGrad"; }
};

class LogSumExp : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    int64_t width = in[0].shape(-1);
    auto x = in[0].data<float>();
    auto o = out[0].data<float>();
    launch(in, out, out[0].size(), row_grain(width), [=](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) o[r] = logsumexp_row(x + r * width, width);
    });
  }
  std::vector<array> vjp(const std::vector<array>& primals, const std::vector<array>& cotangents,
                         const std::vector<int>&, const std::vector<array>& outputs) override {
    return {exp_shift_scale(primals[0], outputs[0], cotangents[0], stream())};
  }
  const char* name() const override { return "TwinloraLogSumExp"; }
};

// exp(x − lse[row])·c[row]: logsumexp's backward (the softmax times the cotangent)
class ExpShiftScale : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    int64_t width = in[0].shape(-1);
    auto x = in[0].data<float>(), l = in[1].data<float>(), c = in[2].data<float>();
    auto o = out[0].data<float>();
    launch(in, out, in[1].size(), row_grain(width), [=](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) exp_shift_scale_row(x + r * width, o + r * width, width, l[r], c[r]);
    });
  }
  const char* name() const override { return "TwinloraExpShiftScale"; }
};

// the rows' lengths under a causal mask: query i of Lq (the last Lq of Lk keys) sees keys 0..i+Lk−Lq
inline int64_t visible(bool causal, int64_t row, int64_t rows_per_matrix, int64_t width) {
  return causal ? std::min<int64_t>(width, row % rows_per_matrix + 1 + width - rows_per_matrix) : width;
}

// softmax over the last axis; param_ 1 (causal): each [.., Lq, Lk] matrix's future keys are masked out
class Softmax : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    int64_t width = in[0].shape(-1), per = in[0].ndim() > 1 ? in[0].shape(-2) : 1;
    auto x = in[0].data<float>();
    auto o = out[0].data<float>();
    bool causal = param_ != 0.0f;
    launch(in, out, in[0].size() / width, row_grain(width), [=](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) softmax_row(x + r * width, o + r * width, visible(causal, r, per, width), width);
    });
  }
  std::vector<array> vjp(const std::vector<array>&, const std::vector<array>& cotangents, const std::vector<int>&,
                         const std::vector<array>& outputs) override {
    return {softmax_grad(outputs[0], cotangents[0], param_ != 0.0f, stream())};
  }
  const char* name() const override { return "TwinloraSoftmax"; }
};

class SoftmaxGrad : public CpuKernel {
 public:
  using CpuKernel::CpuKernel;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& out) override {
    allocate(out);
    int64_t width = in[0].shape(-1), per = in[0].ndim() > 1 ? in[0].shape(-2) : 1;
    auto p = in[0].data<float>(), g = in[1].data<float>();
    auto o = out[0].data<float>();
    bool causal = param_ != 0.0f;
    launch(in, out, in[0].size() / width, row_grain(width), [=](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r)
        softmax_grad_row(p + r * width, g + r * width, o + r * width, visible(causal, r, per, width), width);
    });
  }
  const char* name() const override { return "TwinloraSoftmaxGrad"; }
};

array float32_rows(const array& a, Stream s) {
  return contiguous(astype(a, float32, s), false, s);
}

std::vector<array> silu_mul_grad(const array& g, const array& u, const array& c, Stream s) {
  return array::make_arrays({g.shape(), g.shape()}, {float32, float32}, std::make_shared<SiluMulGrad>(s),
                            {g, u, float32_rows(c, s)});
}

array exp_shift_scale(const array& x, const array& lse, const array& c, Stream s) {
  return array(x.shape(), float32, std::make_shared<ExpShiftScale>(s), {x, lse, float32_rows(c, s)});
}

array silu_mul(const array& g, const array& u) {
  if (g.shape() != u.shape()) throw std::invalid_argument("silu_mul: gate and up differ in shape");
  auto s = to_stream(Device::cpu);
  return array(g.shape(), float32, std::make_shared<SiluMul>(s), {float32_rows(g, s), float32_rows(u, s)});
}

array logsumexp_last(const array& x) {
  if (x.ndim() < 1 || x.shape(-1) == 0) throw std::invalid_argument("logsumexp: needs a non-empty last axis");
  auto s = to_stream(Device::cpu);
  auto shape = x.shape();
  shape.pop_back();
  return array(shape, float32, std::make_shared<LogSumExp>(s), {float32_rows(x, s)});
}

array gelu_approx_grad(const array& x, const array& c, Stream s) {
  return array(x.shape(), float32, std::make_shared<GeluApproxGrad>(s), {x, float32_rows(c, s)});
}

array gelu_approx(const array& x) {
  auto s = to_stream(Device::cpu);
  return array(x.shape(), float32, std::make_shared<GeluApprox>(s), {float32_rows(x, s)});
}

array rms_norm_grad(const array& x, const array& w, const array& c, float eps, Stream s) {
  return array(x.shape(), float32, std::make_shared<RmsNormGrad>(s, eps), {x, w, float32_rows(c, s)});
}

array rms_norm(const array& x, const array& w, float eps) {
  if (x.ndim() < 1 || w.ndim() != 1 || w.shape(0) != x.shape(-1) || x.shape(-1) == 0)
    throw std::invalid_argument("rms_norm: needs x [..., D] and a weight [D]");
  auto s = to_stream(Device::cpu);
  return array(x.shape(), float32, std::make_shared<RmsNorm>(s, eps), {float32_rows(x, s), float32_rows(w, s)});
}

array softmax_grad(const array& p, const array& g, bool causal, Stream s) {
  return array(p.shape(), float32, std::make_shared<SoftmaxGrad>(s, causal ? 1.0f : 0.0f), {p, float32_rows(g, s)});
}

array softmax_last(const array& x, bool causal) {
  if (x.ndim() < 1 || x.shape(-1) == 0) throw std::invalid_argument("softmax: needs a non-empty last axis");
  if (causal && (x.ndim() < 2 || x.shape(-2) > x.shape(-1)))
    throw std::invalid_argument("softmax: a causal mask needs [..., queries, keys] with queries <= keys");
  auto s = to_stream(Device::cpu);
  return array(x.shape(), float32, std::make_shared<Softmax>(s, causal ? 1.0f : 0.0f), {float32_rows(x, s)});
}

}  // namespace

NB_MODULE(_cpu_kernels, m) {
  m.doc() = "twinlora's vectorised, multi-threaded CPU kernels for MLX (backends/mlx/cpu_kernels)";
  m.def("silu_mul", &silu_mul, nb::arg("gate"), nb::arg("up"), "silu(gate)·up, float32, on the CPU");
  m.def("gelu_approx", &gelu_approx, nb::arg("x"), "mlx's nn.gelu_approx (tanh form), float32, on the CPU");
  m.def("rms_norm", &rms_norm, nb::arg("x"), nb::arg("weight"), nb::arg("eps"),
        "mx.fast.rms_norm (a weight [D]), float32, on the CPU");
  m.def("logsumexp", &logsumexp_last, nb::arg("x"), "log-sum-exp over the last axis, float32, on the CPU");
  m.def("softmax", &softmax_last, nb::arg("x"), nb::arg("causal") = false,
        "softmax over the last axis, float32, on the CPU; causal: [..., Lq, Lk] with each query's future keys masked");
  m.def("threads", []() { return thread_count(); }, "threads the kernels split over");
  m.def(
      "set_threads",
      [](int n) {
        if (n < 1) throw std::invalid_argument("set_threads: n must be at least 1");
        thread_count() = n;
        helpers().resize(std::max(1, n - 1));
      },
      nb::arg("n"));
  m.attr("BUILT_FOR_MLX") = std::to_string(MLX_VERSION_MAJOR) + "." + std::to_string(MLX_VERSION_MINOR) + "." +
                             std::to_string(MLX_VERSION_PATCH);
}
