// sfmp::linear_cpu — the mixed-width GEMM on CPU, straight from the format v1 sub-planes.
//
// Resident weights are the checkpoint's packed bytes: nothing is widened or repacked.
// Activations are quantized per (row, group) to int8 (absmax / 127, like llama.cpp's Q8 activations),
// so a sub-plane of width w is an integer dot product: AVX2's maddubs multiplies 32 unsigned w-bit
// codes by 32 signed int8 activations at once. A b-bit code is the sum of its sub-planes shifted by
// their bit offsets, so each plane is its own plain w-bit dot product and the integer results add.
//
// Layout recap (docs/FORMAT.md): a sub-plane of width w is [words_per_row, rows] with rows contiguous,
// so one 8-lane int32 load takes the same word of 8 consecutive output rows: each SIMD lane is an
// output row. Within a word, column c sits at bits [c*w, (c+1)*w); shifting the word right by i*w and
// masking every byte's low w bits leaves, in byte b, column b*S + i (S = 8/w). The matching
// activations (4 bytes: columns i, S+i, 2S+i, 3S+i) are broadcast to all lanes, built once per call
// ("patterns", pattern_index below).
//
// Per (row, group): y += scale * xs * (sum q*xq - zero * sum xq): the zero point is applied once per
// group, in exact integer arithmetic before it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define SFMP_AVX2 1
#else
#define SFMP_AVX2 0
#endif

namespace {

constexpr int CHUNK = 32;        // output rows per unit of work = layouts/panel.py's PANEL_ROWS = 4 vectors (M = 1's block)
constexpr int VECS = CHUNK / 8;  // 8-row int32 vectors per chunk
#ifndef SFMP_MAX_MT
#define SFMP_MAX_MT 4
#endif
constexpr int MAX_MT = SFMP_MAX_MT;  // activation rows sharing one pass over a chunk's weights

struct Layer {
  const int32_t* qweight;
  const uint8_t* bits;
  const int32_t* block_offset;
  const int32_t* group_order;
  const c10::Half* scales;  // [G, N]
  const c10::Half* zeros;   // [G, N]
  int64_t N, K, block_rows, group_size, R, G;
  const int64_t* row_base = nullptr;   // panel order only: first word of row-block r
  const int64_t* row_words = nullptr;  // panel order only: words per row of row-block r (all groups)
  int64_t rows_in(int64_t r) const { return std::min(block_rows, N - r * block_rows); }
  // Where block (r, j)'s first sub-plane starts for the chunk of rows [i0, i0 + n), and the word
  // stride between its plane rows. Packed order: [words, rows_in(r)] per block. Panel order: per
  // chunk, every block of the row-block one after another as [words, n], so a chunk is one run.
  const int32_t* chunk_block(int64_t r, int64_t i0, int64_t n, int64_t j, int64_t& stride) const {
    const int64_t rows = rows_in(r), off = block_offset[r * G + j];
    if (!row_base) {
      stride = rows;
      return qweight + off + i0;
    }
    stride = n;
    return qweight + row_base[r] + i0 * row_words[r] + n * ((off - row_base[r]) / rows);
  }
  int64_t stored_cols(int64_t j) const {
    int64_t c = std::min(group_size, K - j * group_size);
    return (c + 31) / 32 * 32;
  }
};

// Panel order (layouts/panel.py): per row-block, its first word and its words per row (all groups),
// which with block_offset give every chunk's address (Layer::chunk_block). Empty in packed order.
struct PanelTables {
  std::vector<int64_t> base, words;
  PanelTables(Layer& L, bool panel) {
    if (!panel) return;
    base.resize(L.R);
    words.resize(L.R);
    for (int64_t r = 0; r < L.R; ++r) {
      int64_t w = 0;
      for (int64_t j = 0; j < L.G; ++j) w += L.stored_cols(j) * L.bits[r * L.G + j] / 32;
      words[r] = w;
      base[r] = L.G ? L.block_offset[r * L.G + L.group_order[r * L.G]] : 0;
    }
    L.row_base = base.data();
    L.row_words = words.data();
  }
};

// Quantized activations of one row: int8 codes (padded to the stored columns), per-group scale and
// code sum, and per plane width the broadcast patterns.
struct Acts {
  std::vector<float> xs;        // [G]
  std::vector<int32_t> xsum;    // [G]
  std::vector<int32_t> pat[4];  // width 1, 2, 4, 8 -> [Kp / 4] words
};

inline int width_slot(int w) { return w == 1 ? 0 : w == 2 ? 1 : w == 4 ? 2 : 3; }

// The pattern word for plane width w, global word t, shift position i: bytes b = 0..3 hold
// xq[t * (32/w) + b * (8/w) + i]. Its index in Acts::pat is t * (8/w) + i.
void build_acts(const float* x, const Layer& L, int64_t Kp, unsigned width_set, Acts& a, float* residual) {
  std::vector<int8_t> xq(Kp, 0);
  a.xs.assign(L.G, 0.f);
  a.xsum.assign(L.G, 0);
  for (int64_t j = 0; j < L.G; ++j) {
    int64_t c0 = j * L.group_size, c1 = std::min(L.K, c0 + L.group_size);
    float amax = 0.f;
    bool finite = true;
    for (int64_t k = c0; k < c1; ++k) {
      amax = std::max(amax, std::fabs(x[k]));
      finite &= std::isfinite(x[k]);
    }
    if (!finite) {
      a.xs[j] = NAN;  // a non-finite input stays non-finite in the output
      if (residual) std::fill(residual + c0, residual + c1, 0.f);
      continue;
    }
    if (!(amax > 0.f)) {
      if (residual) std::fill(residual + c0, residual + c1, 0.f);
      continue;
    }
    float inv = 127.f / amax;
    int32_t s = 0;
    for (int64_t k = c0; k < c1; ++k) {
      int q = static_cast<int>(std::nearbyint(x[k] * inv));
      q = std::max(-127, std::min(127, q));
      xq[k] = static_cast<int8_t>(q);
      s += q;
    }
    a.xs[j] = amax / 127.f;
    a.xsum[j] = s;
    if (residual)  // what int8 missed, |r| <= xs / 2: quantized again, it carries ~7 more bits
      for (int64_t k = c0; k < c1; ++k) residual[k] = x[k] - a.xs[j] * static_cast<float>(xq[k]);
  }
  for (int w : {1, 2, 4, 8}) {
    if (!(width_set & (1u << width_slot(w)))) continue;
    const int cpw = 32 / w, S = 8 / w;
    const int64_t words = Kp / cpw;
    auto& p = a.pat[width_slot(w)];
    p.assign(words * S, 0);
    for (int64_t t = 0; t < words; ++t)
      for (int i = 0; i < S; ++i) {
        uint32_t v = 0;
        for (int b = 0; b < 4; ++b) v |= static_cast<uint32_t>(static_cast<uint8_t>(xq[t * cpw + b * S + i])) << (8 * b);
        p[t * S + i] = static_cast<int32_t>(v);
      }
  }
}

// Prefill's decoded blocks (decode_chunk below): which widths, and from how many activation rows.
constexpr int64_t TILE_MIN_ROWS = 16;  // activation rows from which decoding a chunk once pays
inline bool tiled(int b) { return b == 3 || b == 5 || b == 6 || b == 7; }

#if SFMP_AVX2
// Words of a width-W plane whose int16 pair sums stay exact: one word adds at most
// S * 2 * (2^W - 1) * 127 to a lane (S = 8/W maddubs of two products each), so the int16 sums are
// widened to int32 (one madd) only every flush_words<W>() words. W = 8 uses signed codes and
// widens every word (|q - 128| * 127 * 2 <= 32512).
// QMAX: the largest code (a decoded tile, below, holds B-bit codes in the W = 8 layout: unsigned, no sign trick).
template <int W, int QMAX = (1 << W) - 1>
constexpr int flush_words() {
  return QMAX == 255 ? 1 : 32767 / ((8 / W) * 2 * QMAX * 127);
}

// One sub-plane of width W over NV consecutive 8-row vectors of a chunk and MT activation rows:
// sum[m * NV + v] = int32 sums of code * xq. The NV vectors of one word are one contiguous run
// (panel order), and every accumulator lives in a register for the whole plane: the former
// word-outer loop kept 8 accumulators per row in memory and paid a load and a store per vector.
template <int W, int MT, int NV, int QMAX = (1 << W) - 1>
[[gnu::always_inline]] inline void plane_sums(const int32_t* plane, int64_t stride, int64_t words, bool partial, __m256i last_mask,
                       const int32_t* const* pat, __m256i* sum) {
  constexpr int S = 8 / W, F = flush_words<W, QMAX>();
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << W) - 1));
  const __m256i sign_bit = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int i = 0; i < MT * NV; ++i) sum[i] = _mm256_setzero_si256();
  for (int64_t t0 = 0; t0 < words; t0 += F) {
    const int64_t t1 = std::min<int64_t>(words, t0 + F);
    __m256i a16[MT * NV];
    for (int i = 0; i < MT * NV; ++i) a16[i] = _mm256_setzero_si256();
    for (int64_t t = t0; t < t1; ++t) {
      const int32_t* wp = plane + t * stride;
      __m256i x[NV];
      for (int v = 0; v < NV; ++v)
        x[v] = (partial && v == NV - 1) ? _mm256_maskload_epi32(wp + 8 * v, last_mask)
                                        : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 8 * v));
      if constexpr (QMAX == 255) {
        for (int v = 0; v < NV; ++v) {
          const __m256i sq = _mm256_xor_si256(x[v], sign_bit);
          const __m256i as = _mm256_abs_epi8(sq);
          for (int m = 0; m < MT; ++m)
            a16[m * NV + v] = _mm256_maddubs_epi16(as, _mm256_sign_epi8(_mm256_set1_epi32(pat[m][t]), sq));
        }
      } else {
        for (int i = 0; i < S; ++i) {
          __m256i c[NV];
          for (int v = 0; v < NV; ++v) c[v] = _mm256_and_si256(_mm256_srli_epi32(x[v], i * W), mask);
          for (int m = 0; m < MT; ++m) {
            const __m256i p = _mm256_set1_epi32(pat[m][t * S + i]);
            for (int v = 0; v < NV; ++v)
              a16[m * NV + v] = _mm256_add_epi16(a16[m * NV + v], _mm256_maddubs_epi16(c[v], p));
          }
        }
      }
    }
    for (int i = 0; i < MT * NV; ++i) sum[i] = _mm256_add_epi32(sum[i], _mm256_madd_epi16(a16[i], ones));
  }
}

// One block of width B (its sub-planes 8, 4, 2, 1 as B has them, one after another from `plane`)
// over NV vectors: total[m * NV + v] = sum of code * xq, each plane's sum shifted to its bit offset.
template <int B, int MT, int NV>
[[gnu::always_inline]] inline void block_sums(const int32_t* plane, int64_t stride, int64_t cols, int64_t col0, int64_t j, bool partial,
                       __m256i last_mask, const Acts* acts, __m256i* total) {
  for (int i = 0; i < MT * NV; ++i) total[i] = _mm256_setzero_si256();
  int shift = 0;
  auto one = [&](auto width) {
    constexpr int w = decltype(width)::value;
    if constexpr ((B & w) != 0) {
      const int64_t words = cols * w / 32;
      const int32_t* pat[MT];
      for (int m = 0; m < MT; ++m) pat[m] = acts[m].pat[width_slot(w)].data() + col0 * w / 32 * (8 / w);
      __m256i s[MT * NV];
      plane_sums<w, MT, NV>(plane, stride, words, partial, last_mask, pat, s);
      for (int m = 0; m < MT; ++m) {
        const __m256i bias = _mm256_set1_epi32(w == 8 ? 128 * acts[m].xsum[j] : 0);
        for (int v = 0; v < NV; ++v)
          total[m * NV + v] = _mm256_add_epi32(total[m * NV + v], _mm256_slli_epi32(_mm256_add_epi32(s[m * NV + v], bias), shift));
      }
      plane += words * stride;
      shift += w;
    }
  };
  one(std::integral_constant<int, 8>{});
  one(std::integral_constant<int, 4>{});
  one(std::integral_constant<int, 2>{});
  one(std::integral_constant<int, 1>{});
}

template <int MT, int NV>
inline void block_sums_for(int b, const int32_t* plane, int64_t stride, int64_t cols, int64_t col0, int64_t j,
                           bool partial, __m256i last_mask, const Acts* acts, __m256i* total) {
  switch (b) {
#define SFMP_CASE(B) \
  case B: return block_sums<B, MT, NV>(plane, stride, cols, col0, j, partial, last_mask, acts, total);
    SFMP_CASE(1) SFMP_CASE(2) SFMP_CASE(3) SFMP_CASE(4) SFMP_CASE(5) SFMP_CASE(6) SFMP_CASE(7)
    default: return block_sums<8, MT, NV>(plane, stride, cols, col0, j, partial, last_mask, acts, total);
#undef SFMP_CASE
  }
}

// Prefill with multi-plane blocks (widths 3, 5, 6, 7): each plane costs its own maddubs per 32
// weights per activation row, so a 3-bit block costs twice a 4-bit one. With many activation rows
// the chunk's such blocks are decoded once into whole codes, one byte each in the 8-bit plane
// layout ([cols / 4 words, np rows], np = the chunk's rows rounded up to 8, zero-padded), and each
// runs as one plane of codes below 2^B: one maddubs per 32 weights per row, the int16 sums widened
// as rarely as the code bound allows. The integer sums are the planes' own, so outputs do not change.
// (TILE_MIN_ROWS and tiled() are above, outside the AVX2 section.)

template <int B>
void decode_block(const int32_t* plane, int64_t stride, int64_t cols, int n, int np, int32_t* tile) {
  alignas(32) int32_t lm[8];
  int shift = 0;
  auto one = [&](auto width) {
    constexpr int w = decltype(width)::value;
    if constexpr ((B & w) != 0) {
      constexpr int cpw = 32 / w;
      const int64_t words = cols * w / 32;
      const __m256i mask = _mm256_set1_epi32((1 << w) - 1);
      for (int v = 0; v < np / 8; ++v) {
        const bool partial = 8 * v + 8 > n;
        for (int l = 0; l < 8; ++l) lm[l] = 8 * v + l < n ? -1 : 0;
        const __m256i m = _mm256_load_si256(reinterpret_cast<const __m256i*>(lm));
        for (int64_t t = 0; t < words; ++t) {
          const int32_t* wp = plane + t * stride + 8 * v;
          const __m256i x = partial ? _mm256_maskload_epi32(wp, m) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
          for (int u = 0; u < cpw / 4; ++u) {
            __m256i acc = _mm256_setzero_si256();
            for (int k = 0; k < 4; ++k)
              acc = _mm256_or_si256(acc, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(x, (4 * u + k) * w), mask), 8 * k + shift));
            int32_t* dst = tile + (t * (cpw / 4) + u) * np + 8 * v;
            __m256i* d = reinterpret_cast<__m256i*>(dst);
            _mm256_storeu_si256(d, _mm256_or_si256(_mm256_loadu_si256(d), acc));
          }
        }
      }
      plane += words * stride;
      shift += w;
    }
  };
  one(std::integral_constant<int, 8>{});
  one(std::integral_constant<int, 4>{});
  one(std::integral_constant<int, 2>{});
  one(std::integral_constant<int, 1>{});
}

// Every tiled block of chunk (r, i0), decoded in storage (group) order one after another into
// `tile`; false (and `tile` untouched) when the chunk has none.
bool decode_chunk(const Layer& L, int64_t r, int64_t i0, std::vector<int32_t>& tile) {
  const int n = static_cast<int>(std::min<int64_t>(CHUNK, L.rows_in(r) - i0)), np = (n + 7) / 8 * 8;
  int64_t need = 0;
  for (int64_t g = 0; g < L.G; ++g) {
    const int64_t j = L.group_order[r * L.G + g];
    if (tiled(L.bits[r * L.G + j])) need += L.stored_cols(j) / 4 * np;
  }
  if (!need) return false;
  tile.assign(need, 0);
  int32_t* dst = tile.data();
  for (int64_t g = 0; g < L.G; ++g) {
    const int64_t j = L.group_order[r * L.G + g];
    const int b = L.bits[r * L.G + j];
    if (!tiled(b)) continue;
    int64_t stride;
    const int32_t* plane = L.chunk_block(r, i0, n, j, stride);
    const int64_t cols = L.stored_cols(j);
    switch (b) {
      case 3: decode_block<3>(plane, stride, cols, n, np, dst); break;
      case 5: decode_block<5>(plane, stride, cols, n, np, dst); break;
      case 6: decode_block<6>(plane, stride, cols, n, np, dst); break;
      default: decode_block<7>(plane, stride, cols, n, np, dst); break;
    }
    dst += cols / 4 * np;
  }
  return true;
}

// A decoded block over NV vectors: total[m * NV + v] = sum of code * xq (the 8-bit patterns).
template <int MT, int NV>
inline void tile_sums_for(int b, const int32_t* tile, int64_t np, int64_t cols, int64_t col0, const Acts* acts,
                          __m256i* total) {
  const int32_t* pat[MT];
  for (int m = 0; m < MT; ++m) pat[m] = acts[m].pat[width_slot(8)].data() + col0 / 4;
  const __m256i none = _mm256_setzero_si256();
  switch (b) {
    case 3: return plane_sums<8, MT, NV, 7>(tile, np, cols / 4, false, none, pat, total);
    case 5: return plane_sums<8, MT, NV, 31>(tile, np, cols / 4, false, none, pat, total);
    case 6: return plane_sums<8, MT, NV, 63>(tile, np, cols / 4, false, none, pat, total);
    default: return plane_sums<8, MT, NV, 127>(tile, np, cols / 4, false, none, pat, total);
  }
}

// 8-row vectors per register block: MT rows x NV vectors of int16 and int32 accumulators must fit
// the 16 ymm registers beside the loaded words and their decoded bytes.
#ifndef SFMP_NV1
#define SFMP_NV1 4
#endif
template <int MT>
constexpr int block_vectors() {
  return MT == 1 ? SFMP_NV1 : MT == 2 ? 2 : 1;
}

// tile: the chunk's decoded blocks (decode_chunk), or null to read every block from its planes.
template <int MT>
void chunk_avx2(const Layer& L, int64_t r, int64_t i0, const Acts* acts, float* const* y, const int32_t* tile) {
  constexpr int NV = block_vectors<MT>();
  const int64_t rows = L.rows_in(r), row0 = r * L.block_rows + i0;
  const int n = static_cast<int>(std::min<int64_t>(CHUNK, rows - i0)), np = (n + 7) / 8 * 8;
  const int nv = (n + 7) / 8, tail = n - 8 * (nv - 1);
  alignas(32) int32_t lm[8];
  for (int l = 0; l < 8; ++l) lm[l] = l < tail ? -1 : 0;
  const __m256i last_mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(lm));
  const bool last_partial = tail < 8;
  alignas(32) float out[MT][CHUNK] = {};
  alignas(16) c10::Half sh_tail[CHUNK] = {}, zh_tail[CHUNK] = {};
  for (int64_t g = 0; g < L.G; ++g) {
    const int64_t j = L.group_order[r * L.G + g];
    const int b = L.bits[r * L.G + j];
    const int64_t cols = L.stored_cols(j), col0 = j * L.group_size;
    int64_t stride;
    const int32_t* plane = L.chunk_block(r, i0, n, j, stride);
    // This group's scales and zeros sit in two other streams ([G, N]): ask for the next group's
    // now, so their misses overlap this group's dot products instead of stalling after them.
    if (g + 1 < L.G) {
      const int64_t jn = L.group_order[r * L.G + g + 1];
      for (int l = 0; l < n; l += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(L.scales + jn * L.N + row0 + l), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(L.zeros + jn * L.N + row0 + l), _MM_HINT_T0);
      }
    }
    const c10::Half* sh = L.scales + j * L.N + row0;
    const c10::Half* zh = L.zeros + j * L.N + row0;
    if (n < CHUNK) {  // a ragged chunk: padded copies, so the vector loads below stay in bounds
      std::copy(sh, sh + n, sh_tail);
      std::copy(zh, zh + n, zh_tail);
      sh = sh_tail;
      zh = zh_tail;
    }
    // Applies the group's scale and zero point to `count` vectors from v0 and adds them to out.
    auto emit = [&](const __m256i* total, int v0, int count) {
      for (int dv = 0; dv < count; ++dv) {
        const int v = v0 + dv;
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sh + 8 * v)));
        const __m256 z = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zh + 8 * v)));
        for (int m = 0; m < MT; ++m) {
          const __m256 d = _mm256_fnmadd_ps(z, _mm256_set1_ps(static_cast<float>(acts[m].xsum[j])),
                                            _mm256_cvtepi32_ps(total[m * count + dv]));
          const __m256 o = _mm256_load_ps(out[m] + 8 * v);
          _mm256_store_ps(out[m] + 8 * v, _mm256_fmadd_ps(_mm256_mul_ps(s, _mm256_set1_ps(acts[m].xs[j])), d, o));
        }
      }
    };
    int v = 0;
    if (tile && tiled(b)) {
      for (; v + NV <= nv; v += NV) {
        __m256i total[MT * NV];
        tile_sums_for<MT, NV>(b, tile + 8 * v, np, cols, col0, acts, total);
        emit(total, v, NV);
      }
      for (; v < nv; ++v) {
        __m256i total[MT];
        tile_sums_for<MT, 1>(b, tile + 8 * v, np, cols, col0, acts, total);
        emit(total, v, 1);
      }
      tile += cols / 4 * np;
      continue;
    }
    for (; v + NV <= nv; v += NV) {
      __m256i total[MT * NV];
      block_sums_for<MT, NV>(b, plane + 8 * v, stride, cols, col0, j, last_partial && v + NV == nv, last_mask,
                             acts, total);
      emit(total, v, NV);
    }
    for (; v < nv; ++v) {
      __m256i total[MT];
      block_sums_for<MT, 1>(b, plane + 8 * v, stride, cols, col0, j, last_partial && v + 1 == nv, last_mask, acts,
                            total);
      emit(total, v, 1);
    }
  }
  for (int m = 0; m < MT; ++m) std::copy(out[m], out[m] + n, y[m] + row0);
}
#endif

// Portable twin of chunk_avx2: the same integer sums, one row at a time.
void chunk_scalar(const Layer& L, int64_t r, int64_t i0, int mt, const Acts* acts, float* const* y) {
  const int64_t rows = L.rows_in(r), row0 = r * L.block_rows + i0;
  const int n = static_cast<int>(std::min<int64_t>(CHUNK, rows - i0));
  for (int l = 0; l < n; ++l)
    for (int m = 0; m < mt; ++m) {
      float out = 0.f;
      for (int64_t g = 0; g < L.G; ++g) {
        const int64_t j = L.group_order[r * L.G + g];
        const int b = L.bits[r * L.G + j];
        const int64_t cols = L.stored_cols(j), word0 = j * L.group_size;
        int64_t stride;
        const int32_t* plane = L.chunk_block(r, i0, n, j, stride) + l;
        int64_t acc = 0;
        int shift = 0;
        for (int w : {8, 4, 2, 1}) {
          if (!(b & w)) continue;
          const int cpw = 32 / w, S = 8 / w;
          const int64_t words = cols / cpw;
          const int32_t* pat = acts[m].pat[width_slot(w)].data() + word0 / cpw * S;
          int64_t pacc = 0;
          for (int64_t t = 0; t < words; ++t) {
            const uint32_t v = static_cast<uint32_t>(plane[t * stride]);
            for (int c = 0; c < cpw; ++c) {
              const int i = c % S, byte = c / S;
              const int8_t xq = static_cast<int8_t>(static_cast<uint32_t>(pat[t * S + i]) >> (8 * byte));
              pacc += static_cast<int64_t>((v >> (c * w)) & ((1u << w) - 1)) * xq;
            }
          }
          acc += pacc << shift;
          plane += words * stride;
          shift += w;
        }
        const float s = static_cast<float>(L.scales[j * L.N + row0 + l]);
        const float z = static_cast<float>(L.zeros[j * L.N + row0 + l]);
        out += s * acts[m].xs[j] * (static_cast<float>(acc) - z * static_cast<float>(acts[m].xsum[j]));
      }
      y[m][row0 + l] = out;
    }
}

#if SFMP_AVX2
template <int MT>
void chunk_avx2_rows(const Layer& L, int64_t r, int64_t i0, int mt, const Acts* acts, float* const* y,
                     const int32_t* tile) {
  if constexpr (MT > 1)
    if (mt < MT) return chunk_avx2_rows<MT - 1>(L, r, i0, mt, acts, y, tile);
  chunk_avx2<MT>(L, r, i0, acts, y, tile);
}
#endif

void run_chunk(const Layer& L, int64_t r, int64_t i0, int mt, const Acts* acts, float* const* y, bool portable,
               const int32_t* tile) {
#if SFMP_AVX2
  if (!portable) {
    return chunk_avx2_rows<MAX_MT>(L, r, i0, mt, acts, y, tile);
  }
#endif
  (void)tile;
  chunk_scalar(L, r, i0, mt, acts, y);
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& bits,
                      const at::Tensor& block_offset, const at::Tensor& group_order, const at::Tensor& segment_ptr,
                      const at::Tensor& scales, const at::Tensor& zeros, const at::Tensor& row_perm,
                      const at::Tensor& col_perm, int64_t out_features, int64_t in_features, int64_t block_rows,
                      int64_t group_size, int64_t flags) {
  const bool portable = flags & 1, residual = flags & 2, panel = flags & 4;
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "sfmp::linear_cpu: x has ", x.dim() ? x.size(-1) : 0,
              " features, the layer takes ", in_features);
  TORCH_CHECK(qweight.is_contiguous() && scales.is_contiguous() && zeros.is_contiguous() &&
                  bits.is_contiguous() && block_offset.is_contiguous() && group_order.is_contiguous(),
              "sfmp::linear_cpu: packed tensors must be contiguous");
  (void)segment_ptr;  // the walk follows group_order; validate() proved the two agree
  const int64_t N = out_features, K = in_features;
  const int64_t R = bits.size(0), G = bits.size(1);
  Layer L{qweight.data_ptr<int32_t>(), bits.data_ptr<uint8_t>(), block_offset.data_ptr<int32_t>(),
          group_order.data_ptr<int32_t>(), reinterpret_cast<const c10::Half*>(scales.data_ptr<at::Half>()),
          reinterpret_cast<const c10::Half*>(zeros.data_ptr<at::Half>()), N, K, block_rows, group_size, R, G};
  const int64_t Kp = G ? (G - 1) * group_size + L.stored_cols(G - 1) : 0;
  PanelTables panel_tables(L, panel);

  at::Tensor xf = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = xf.size(0);
  at::Tensor out = at::empty({M, N}, xf.options());  // every row is written by its chunk
  auto shape = x.sizes().vec();
  shape.back() = N;
  if (M == 0 || N == 0) return out.reshape(shape).to(x.scalar_type());

  unsigned width_set = 0;
  bool any_tiled = false;
  const uint8_t* bp = L.bits;
  for (int64_t i = 0; i < R * G; ++i) {
    any_tiled |= tiled(bp[i]);
    for (int w : {1, 2, 4, 8})
      if (bp[i] & w) width_set |= 1u << width_slot(w);
  }

  const float* xp = xf.data_ptr<float>();
  const int32_t* cp = col_perm.numel() ? col_perm.data_ptr<int32_t>() : nullptr;
  // Residual mode: each row x becomes two int8 rows, x ~ xs*xq + xs2*xq2 (xq2 quantizes what xq
  // missed), run as two activation rows over one decode of the weights, their outputs added: about
  // 15-bit activations for the price of a second maddubs per weight vector.
  const int64_t A = residual ? 2 : 1, MA = M * A;
  const bool use_tile = SFMP_AVX2 && !portable && any_tiled && MA >= TILE_MIN_ROWS;
  if (use_tile) width_set |= 1u << width_slot(8);  // decoded blocks read the 8-bit patterns
  std::vector<Acts> acts(MA);
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    std::vector<float> xg(Kp, 0.f), rg(residual ? Kp : 0, 0.f);
    for (int64_t m = m0; m < m1; ++m) {
      const float* row = xp + m * K;
      for (int64_t k = 0; k < K; ++k) xg[k] = cp ? row[cp[k]] : row[k];
      build_acts(xg.data(), L, Kp, width_set, acts[m * A], residual ? rg.data() : nullptr);
      if (residual) build_acts(rg.data(), L, Kp, width_set, acts[m * A + 1], nullptr);
    }
  });

  // y in reordered rows (A per input row); summed and scattered through row_perm afterwards.
  const bool direct = !row_perm.numel() && !residual;
  at::Tensor yr = direct ? out : at::empty({MA, N}, xf.options());
  float* yp = yr.data_ptr<float>();
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i0 = 0; i0 < L.rows_in(r); i0 += CHUNK) tiles.emplace_back(r, i0);
  const int64_t T = static_cast<int64_t>(tiles.size());
  at::parallel_for(0, T, 4, [&](int64_t t0, int64_t t1) {
    std::vector<int32_t> tile;
    for (int64_t t = t0; t < t1; ++t) {
      const int32_t* tp = nullptr;
#if SFMP_AVX2
      if (use_tile && decode_chunk(L, tiles[t].first, tiles[t].second, tile)) tp = tile.data();
#endif
      for (int64_t m0 = 0; m0 < MA; m0 += MAX_MT) {
        const int mt = static_cast<int>(std::min<int64_t>(MAX_MT, MA - m0));
        float* ys[MAX_MT];
        for (int m = 0; m < mt; ++m) ys[m] = yp + (m0 + m) * N;
        run_chunk(L, tiles[t].first, tiles[t].second, mt, acts.data() + m0, ys, portable, tp);
      }
    }
  });
  if (!direct) {
    const int32_t* rp = row_perm.numel() ? row_perm.data_ptr<int32_t>() : nullptr;
    float* op = out.data_ptr<float>();
    for (int64_t m = 0; m < M; ++m) {
      const float* hi = yp + m * A * N;
      const float* lo = residual ? hi + N : nullptr;
      for (int64_t i = 0; i < N; ++i) op[m * N + (rp ? rp[i] : i)] = lo ? hi[i] + lo[i] : hi[i];
    }
  }
  return out.reshape(shape).to(x.scalar_type());
}

// Rows of W-hat in original coordinates, for an embedding tied to a quantized head: out[..., k] =
// scale * (q - zero) of original row ids[...] and original column k. ids: int64 [...]; out fp32 [..., K].
at::Tensor embedding_cpu(const at::Tensor& ids, const at::Tensor& qweight, const at::Tensor& bits,
                         const at::Tensor& block_offset, const at::Tensor& group_order, const at::Tensor& segment_ptr,
                         const at::Tensor& scales, const at::Tensor& zeros, const at::Tensor& row_perm,
                         const at::Tensor& col_perm, int64_t out_features, int64_t in_features, int64_t block_rows,
                         int64_t group_size, int64_t flags) {
  (void)segment_ptr;
  const int64_t N = out_features, K = in_features, G = bits.size(1);
  Layer L{qweight.data_ptr<int32_t>(), bits.data_ptr<uint8_t>(), block_offset.data_ptr<int32_t>(),
          group_order.data_ptr<int32_t>(), reinterpret_cast<const c10::Half*>(scales.data_ptr<at::Half>()),
          reinterpret_cast<const c10::Half*>(zeros.data_ptr<at::Half>()), N, K, block_rows, group_size,
          bits.size(0), G};
  PanelTables panel_tables(L, flags & 4);
  at::Tensor flat = ids.reshape({-1}).to(at::kLong).contiguous();
  const int64_t T = flat.numel();
  const int64_t* ip = flat.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(ip[t] >= 0 && ip[t] < N, "sfmp::embedding_cpu: token id ", ip[t], " is out of range [0, ", N, ")");
  std::vector<int32_t> inv;  // original row -> reordered row
  if (row_perm.numel()) {
    inv.resize(N);
    const int32_t* rp = row_perm.data_ptr<int32_t>();
    for (int64_t i = 0; i < N; ++i) inv[rp[i]] = static_cast<int32_t>(i);
  }
  const int32_t* cp = col_perm.numel() ? col_perm.data_ptr<int32_t>() : nullptr;
  const uint8_t* bp = bits.data_ptr<uint8_t>();
  const c10::Half* sp = reinterpret_cast<const c10::Half*>(scales.data_ptr<at::Half>());
  const c10::Half* zp = reinterpret_cast<const c10::Half*>(zeros.data_ptr<at::Half>());
  at::Tensor out = at::empty({T, K}, scales.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = inv.empty() ? ip[t] : inv[ip[t]];
      const int64_t r = row / block_rows, l = row % block_rows, i0 = l / CHUNK * CHUNK;
      const int64_t n = std::min<int64_t>(CHUNK, L.rows_in(r) - i0);
      float* dst = o + t * K;
      for (int64_t j = 0; j < G; ++j) {
        const int b = bp[r * G + j];
        const int64_t c0 = j * group_size, ncols = std::min(group_size, K - c0);
        const int64_t stored = (ncols + 31) / 32 * 32;
        const float s = static_cast<float>(sp[j * N + row]), z = static_cast<float>(zp[j * N + row]);
        int64_t stride;
        const int32_t* plane = L.chunk_block(r, i0, n, j, stride) + (l - i0);
        std::vector<uint32_t> q(stored, 0);
        int shift = 0;
        for (int w : {8, 4, 2, 1}) {
          if (!(b & w)) continue;
          const int cpw = 32 / w;
          const int64_t words = stored / cpw;
          for (int64_t wi = 0; wi < words; ++wi) {
            const uint32_t v = static_cast<uint32_t>(plane[wi * stride]);
            for (int c = 0; c < cpw; ++c) q[wi * cpw + c] |= ((v >> (c * w)) & ((1u << w) - 1)) << shift;
          }
          plane += words * stride;
          shift += w;
        }
        for (int64_t k = 0; k < ncols; ++k) {
          const int64_t col = cp ? cp[c0 + k] : c0 + k;
          dst[col] = s * (static_cast<float>(q[k]) - z);
        }
      }
    }
  });
  auto shape = ids.sizes().vec();
  shape.push_back(K);
  return out.reshape(shape);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sfmp, m) {
  m.def(
      "embedding_cpu.v2(Tensor ids, Tensor qweight, Tensor bits, Tensor block_offset, Tensor group_order, "
      "Tensor segment_ptr, Tensor scales, Tensor zeros, Tensor row_perm, Tensor col_perm, "
      "int out_features, int in_features, int block_rows, int group_size, int flags=0) -> Tensor");
  // The overload name is the schema's version: compiled graphs that Inductor caches call the op by
  // name with the arguments of its schema then, and its cache key does not see a schema, so a
  // changed schema gets a new overload name (v2: the trailing int became "flags"; bit 2 = panel
  // order, layouts/panel.py, read by both ops).
  m.def(
      "linear_cpu.v2(Tensor x, Tensor qweight, Tensor bits, Tensor block_offset, Tensor group_order, "
      "Tensor segment_ptr, Tensor scales, Tensor zeros, Tensor row_perm, Tensor col_perm, "
      "int out_features, int in_features, int block_rows, int group_size, int flags=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(sfmp, CPU, m) {
  m.impl("linear_cpu.v2", &linear_cpu);
  m.impl("embedding_cpu.v2", &embedding_cpu);
}
