// sfmp::decode_attention_cpu — one query token against a grouped KV cache, reading only the slots the
// mask lets it attend.
//
// Why: a static KV cache of L slots with n filled, run through SDPA, costs L per layer per token
// (SDPA computes every score and only then masks it). Here the mask is looked at first and a masked
// slot's K and V rows are never loaded, so a 264-slot cache holding 64 tokens costs 64.
//
// Per (batch, KV head) the rep = H / KVH query heads that share it are done together, so every
// attended K row and V row is loaded once for all of them:
//   pass 1  s[r][l] = scale * <q_r, k_l> + additive_mask   (attended l only; running max per r)
//   pass 2  p[r][l] = exp(s[r][l] - max_r), acc_r += p * v_l, sum_r += p
//   out_r   = acc_r / sum_r, or zeros where nothing is attended (what CPU SDPA returns then).
// Everything is fp32; fp16/bf16 rows are widened on load and the output is cast back.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define SFMP_ATTN_AVX2 1
#else
#define SFMP_ATTN_AVX2 0
#endif

namespace {

// Widen a row of D elements of T to fp32 (q rows once per call; K/V rows are read in place).
template <typename T>
inline float to_f32(T x) {
  return static_cast<float>(x);
}

#if SFMP_ATTN_AVX2
template <typename T>
inline __m256 load8(const T* p);
template <>
inline __m256 load8<float>(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
inline __m256 load8<c10::Half>(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <>
inline __m256 load8<c10::BFloat16>(const c10::BFloat16* p) {  // bf16 = the high half of an fp32
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

template <typename T>
inline float dot(const float* q, const T* k, int64_t D, bool simd) {
  int64_t d = 0;
  float s = 0.f;
#if SFMP_ATTN_AVX2
  if (simd) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; d + 16 <= D; d += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), load8(k + d + 8), a1);
    }
    for (; d + 8 <= D; d += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), a0);
    s = hsum(_mm256_add_ps(a0, a1));
  }
#endif
  for (; d < D; ++d) s += q[d] * to_f32(k[d]);
  return s;
}

template <typename T>
inline void axpy(float a, const T* v, float* acc, int64_t D, bool simd) {
  int64_t d = 0;
#if SFMP_ATTN_AVX2
  if (simd) {
    const __m256 av = _mm256_set1_ps(a);
    for (; d + 8 <= D; d += 8) _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(av, load8(v + d), _mm256_loadu_ps(acc + d)));
  }
#endif
  for (; d < D; ++d) acc[d] += a * to_f32(v[d]);
}

// The mask as the kernel reads it: element (b, h, l) at base + b*sb + h*sh + l*sl (strides 0 where
// it broadcasts). kind 0: none (attend all), 1: bool (true = attend), 2: additive fp32/fp16/bf16.
struct Mask {
  int kind = 0;
  const void* base = nullptr;
  at::ScalarType dtype = at::kFloat;
  int64_t sb = 0, sh = 0, sl = 0;
  // Additive term of slot l for (b, h); -inf = not attended (never read).
  float add(int64_t b, int64_t h, int64_t l) const {
    const int64_t i = b * sb + h * sh + l * sl;
    switch (kind) {
      case 0:
        return 0.f;
      case 1:
        return static_cast<const bool*>(base)[i] ? 0.f : -std::numeric_limits<float>::infinity();
      default:
        switch (dtype) {
          case at::kHalf:
            return static_cast<float>(static_cast<const c10::Half*>(base)[i]);
          case at::kBFloat16:
            return static_cast<float>(static_cast<const c10::BFloat16*>(base)[i]);
          default:
            return static_cast<const float*>(base)[i];
        }
    }
  }
};

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Mask& mask, float scale,
         at::Tensor& out, bool simd) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), KVH = k.size(1), L = k.size(2), rep = H / KVH;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t ksb = k.stride(0), ksh = k.stride(1), ksl = k.stride(2);
  const int64_t vsb = v.stride(0), vsh = v.stride(1), vsl = v.stride(2);
  at::parallel_for(0, B * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(rep * D), acc(rep * D), s(rep * L), mx(rep), sum(rep);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t b = g / KVH, kh = g % KVH, h0 = kh * rep;
      for (int64_t i = 0; i < rep * D; ++i) qf[i] = to_f32(qp[(b * H + h0) * D + i]) * scale;
      std::fill(mx.begin(), mx.end(), -std::numeric_limits<float>::infinity());
      // pass 1: scores of the attended slots (a slot no head of the group attends is skipped whole)
      for (int64_t l = 0; l < L; ++l) {
        const T* kl = kp + b * ksb + kh * ksh + l * ksl;
        for (int64_t r = 0; r < rep; ++r) {
          const float m = mask.add(b, h0 + r, l);
          float x = -std::numeric_limits<float>::infinity();
          if (m != -std::numeric_limits<float>::infinity()) x = dot(qf.data() + r * D, kl, D, simd) + m;
          s[r * L + l] = x;
          if (x > mx[r]) mx[r] = x;
        }
      }
      // pass 2: softmax weights and the weighted sum of the attended V rows
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(sum.begin(), sum.end(), 0.f);
      for (int64_t l = 0; l < L; ++l) {
        const T* vl = vp + b * vsb + kh * vsh + l * vsl;
        for (int64_t r = 0; r < rep; ++r) {
          const float x = s[r * L + l];
          if (x == -std::numeric_limits<float>::infinity()) continue;
          const float p = std::exp(x - mx[r]);
          sum[r] += p;
          axpy(p, vl, acc.data() + r * D, D, simd);
        }
      }
      for (int64_t r = 0; r < rep; ++r) {
        // nothing attended: zeros, as CPU SDPA returns for a fully masked row
        const float inv = sum[r] > 0.f ? 1.f / sum[r] : 0.f;
        T* o = op + (b * H + h0 + r) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(acc[r * D + d] * inv);
      }
    }
  });
}

at::Tensor decode_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                const std::optional<at::Tensor>& mask_in, double scale, int64_t flags) {
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4,
              "decode_attention_cpu: q, k, v must be 4-D ([B, H, 1, D], [B, KVH, L, D]), got ", q_in.sizes(), ", ",
              k_in.sizes(), ", ", v_in.sizes());
  const int64_t B = q_in.size(0), H = q_in.size(1), D = q_in.size(3), KVH = k_in.size(1), L = k_in.size(2);
  TORCH_CHECK(q_in.size(2) == 1, "decode_attention_cpu: one query token, got q ", q_in.sizes());
  TORCH_CHECK(k_in.sizes() == v_in.sizes() && k_in.size(0) == B && k_in.size(3) == D,
              "decode_attention_cpu: k and v must both be [B, KVH, L, D] = [", B, ", KVH, L, ", D, "], got ",
              k_in.sizes(), " and ", v_in.sizes());
  TORCH_CHECK(KVH > 0 && H % KVH == 0, "decode_attention_cpu: query heads (", H,
              ") must be a multiple of KV heads (", KVH, ")");
  TORCH_CHECK(q_in.scalar_type() == k_in.scalar_type() && q_in.scalar_type() == v_in.scalar_type(),
              "decode_attention_cpu: q, k, v must share a dtype, got ", q_in.scalar_type(), ", ",
              k_in.scalar_type(), ", ", v_in.scalar_type());
  const auto dt = q_in.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "decode_attention_cpu: dtype must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(q_in.device().is_cpu() && k_in.device().is_cpu() && v_in.device().is_cpu(),
              "decode_attention_cpu: CPU tensors only");
  // K/V are the whole static cache: never copy them unless a row is not contiguous itself.
  const at::Tensor q = q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  Mask mask;
  at::Tensor m;
  if (mask_in.has_value() && mask_in->defined()) {
    m = *mask_in;
    TORCH_CHECK(m.dim() == 4 && (m.size(0) == B || m.size(0) == 1) && (m.size(1) == H || m.size(1) == 1) &&
                    m.size(2) == 1 && m.size(3) >= L,
                "decode_attention_cpu: mask must be [B|1, H|1, 1, >=L] = [", B, "|1, ", H, "|1, 1, >=", L, "], got ",
                m.sizes());
    TORCH_CHECK(m.device().is_cpu(), "decode_attention_cpu: CPU mask only");
    const auto mdt = m.scalar_type();
    TORCH_CHECK(mdt == at::kBool || mdt == at::kFloat || mdt == at::kHalf || mdt == at::kBFloat16,
                "decode_attention_cpu: mask must be bool (true = attend) or an additive float, got ", mdt);
    mask.kind = mdt == at::kBool ? 1 : 2;
    mask.dtype = mdt;
    mask.base = m.data_ptr();
    mask.sb = m.size(0) == 1 ? 0 : m.stride(0);
    mask.sh = m.size(1) == 1 ? 0 : m.stride(1);
    mask.sl = m.stride(3);
  }
  at::Tensor out = at::empty({B, H, 1, D}, q.options());
  if (B == 0 || H == 0 || D == 0) return out;
  const bool simd = !(flags & 1);
  const float sc = static_cast<float>(scale);
  switch (dt) {
    case at::kHalf:
      run<c10::Half>(q, k, v, mask, sc, out, simd);
      break;
    case at::kBFloat16:
      run<c10::BFloat16>(q, k, v, mask, sc, out, simd);
      break;
    default:
      run<float>(q, k, v, mask, sc, out, simd);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sfmp, m) {
  // v1: the overload name versions the schema (see cpu_kernel.cpp). flags bit 0: the portable code.
  m.def("decode_attention_cpu.v1(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, int flags=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(sfmp, CPU, m) {
  m.impl("decode_attention_cpu.v1", &decode_attention_cpu);
}
