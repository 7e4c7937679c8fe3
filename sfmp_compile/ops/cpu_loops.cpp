// The inner loops of sfmp::linear_cpu over one chunk of output rows: the AVX2 register-blocked
// plane sums, prefill's decoded blocks, and the portable scalar twin (bit for bit the same sums).
#include "cpu_kernel.h"

namespace sfmp_cpu {

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
#if SFMP_VNNI
[[gnu::always_inline]] inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#endif
}

// plane_sums (below) on VNNI: one dpbusd per 32 products straight into int32, 8-bit codes as the
// unsigned bytes they are (so block_sums adds no bias). Two accumulator sets (even and odd shift
// positions) keep two dependency chains per register block in flight.
template <int W, int MT, int NV>
[[gnu::always_inline]] inline void plane_sums_vnni(const int32_t* plane, int64_t stride, int64_t words, bool partial,
                                                   __m256i last_mask, const int32_t* const* pat, __m256i* sum) {
  constexpr int S = 8 / W, A = S > 1 ? 2 : 1;
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << W) - 1));
  __m256i acc[A][MT * NV];
  for (int a = 0; a < A; ++a)
    for (int i = 0; i < MT * NV; ++i) acc[a][i] = _mm256_setzero_si256();
  for (int64_t t = 0; t < words; ++t) {
    const int32_t* wp = plane + t * stride;
    __m256i x[NV];
    for (int v = 0; v < NV; ++v)
      x[v] = (partial && v == NV - 1) ? _mm256_maskload_epi32(wp + 8 * v, last_mask)
                                      : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 8 * v));
    for (int i = 0; i < S; ++i) {
      __m256i c[NV];
      for (int v = 0; v < NV; ++v) c[v] = W == 8 ? x[v] : _mm256_and_si256(_mm256_srli_epi32(x[v], i * W), mask);
      for (int m = 0; m < MT; ++m) {
        const __m256i p = _mm256_set1_epi32(pat[m][t * S + i]);
        for (int v = 0; v < NV; ++v) acc[i % A][m * NV + v] = dot_u8s8(acc[i % A][m * NV + v], c[v], p);
      }
    }
  }
  for (int i = 0; i < MT * NV; ++i) sum[i] = A > 1 ? _mm256_add_epi32(acc[0][i], acc[A - 1][i]) : acc[0][i];
}
#endif

template <int W, int MT, int NV, int QMAX>
[[gnu::always_inline]] inline void plane_sums_maddubs(const int32_t* plane, int64_t stride, int64_t words, bool partial,
                                                      __m256i last_mask, const int32_t* const* pat, __m256i* sum) {
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

// V: VNNI's loop (only where built), else maddubs; the other one is never instantiated.
template <int W, int MT, int NV, int QMAX = (1 << W) - 1, bool V = false>
[[gnu::always_inline]] inline void plane_sums(const int32_t* plane, int64_t stride, int64_t words, bool partial, __m256i last_mask,
                       const int32_t* const* pat, __m256i* sum) {
#if SFMP_VNNI
  if constexpr (V)
    plane_sums_vnni<W, MT, NV>(plane, stride, words, partial, last_mask, pat, sum);
  else
#endif
    plane_sums_maddubs<W, MT, NV, QMAX>(plane, stride, words, partial, last_mask, pat, sum);
}

// One block of width B (its sub-planes 8, 4, 2, 1 as B has them, one after another from `plane`)
// over NV vectors: total[m * NV + v] = sum of code * xq, each plane's sum shifted to its bit offset.
template <bool V, int B, int MT, int NV>
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
      plane_sums<w, MT, NV, (1 << w) - 1, V>(plane, stride, words, partial, last_mask, pat, s);
      for (int m = 0; m < MT; ++m) {
        const __m256i bias = _mm256_set1_epi32(w == 8 && !V ? 128 * acts[m].xsum[j] : 0);
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

template <bool V, int MT, int NV>
inline void block_sums_for(int b, const int32_t* plane, int64_t stride, int64_t cols, int64_t col0, int64_t j,
                           bool partial, __m256i last_mask, const Acts* acts, __m256i* total) {
  switch (b) {
#define SFMP_CASE(B) \
  case B: return block_sums<V, B, MT, NV>(plane, stride, cols, col0, j, partial, last_mask, acts, total);
    SFMP_CASE(1) SFMP_CASE(2) SFMP_CASE(3) SFMP_CASE(4) SFMP_CASE(5) SFMP_CASE(6) SFMP_CASE(7)
    default: return block_sums<V, 8, MT, NV>(plane, stride, cols, col0, j, partial, last_mask, acts, total);
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

// The per-plane walk (widths 8, 4, 2, 1 as B has them, plane and shift advanced) is block_sums' own,
// written out again: one shared lambda-taking helper measured slower on the whole model (KERNELS.md).
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
template <bool V, int MT, int NV>
inline void tile_sums_for(int b, const int32_t* tile, int64_t np, int64_t cols, int64_t col0, const Acts* acts,
                          __m256i* total) {
  const int32_t* pat[MT];
  for (int m = 0; m < MT; ++m) pat[m] = acts[m].pat[width_slot(8)].data() + col0 / 4;
  const __m256i none = _mm256_setzero_si256();
  switch (b) {
    case 3: return plane_sums<8, MT, NV, 7, V>(tile, np, cols / 4, false, none, pat, total);
    case 5: return plane_sums<8, MT, NV, 31, V>(tile, np, cols / 4, false, none, pat, total);
    case 6: return plane_sums<8, MT, NV, 63, V>(tile, np, cols / 4, false, none, pat, total);
    default: return plane_sums<8, MT, NV, 127, V>(tile, np, cols / 4, false, none, pat, total);
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
template <bool V, int MT>
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
        tile_sums_for<V, MT, NV>(b, tile + 8 * v, np, cols, col0, acts, total);
        emit(total, v, NV);
      }
      for (; v < nv; ++v) {
        __m256i total[MT];
        tile_sums_for<V, MT, 1>(b, tile + 8 * v, np, cols, col0, acts, total);
        emit(total, v, 1);
      }
      tile += cols / 4 * np;
      continue;
    }
    for (; v + NV <= nv; v += NV) {
      __m256i total[MT * NV];
      block_sums_for<V, MT, NV>(b, plane + 8 * v, stride, cols, col0, j, last_partial && v + NV == nv, last_mask,
                             acts, total);
      emit(total, v, NV);
    }
    for (; v < nv; ++v) {
      __m256i total[MT];
      block_sums_for<V, MT, 1>(b, plane + 8 * v, stride, cols, col0, j, last_partial && v + 1 == nv, last_mask, acts,
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
template <bool V, int MT>
void chunk_avx2_rows(const Layer& L, int64_t r, int64_t i0, int mt, const Acts* acts, float* const* y,
                     const int32_t* tile) {
  if constexpr (MT > 1)
    if (mt < MT) return chunk_avx2_rows<V, MT - 1>(L, r, i0, mt, acts, y, tile);
  chunk_avx2<V, MT>(L, r, i0, acts, y, tile);
}
#endif

void run_chunk(const Layer& L, int64_t r, int64_t i0, int mt, const Acts* acts, float* const* y, bool portable,
               const int32_t* tile) {
#if SFMP_AVX2
  if (!portable) {
#if SFMP_VNNI
    if (L.vnni) return chunk_avx2_rows<true, MAX_MT>(L, r, i0, mt, acts, y, tile);
#endif
    return chunk_avx2_rows<false, MAX_MT>(L, r, i0, mt, acts, y, tile);
  }
#endif
  (void)tile;
  chunk_scalar(L, r, i0, mt, acts, y);
}

#if !SFMP_AVX2
bool decode_chunk(const Layer&, int64_t, int64_t, std::vector<int32_t>&) { return false; }
#endif

}  // namespace sfmp_cpu
