// Shared by the C++ CPU kernel's two translation units: cpu_kernel.cpp (activations, the op entry
// points, registration) and cpu_loops.cpp (the inner loops over one chunk of output rows).
// See cpu_kernel.cpp's header for the method and layout recap.
#pragma once

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
// u8 x s8 dot products into int32 in one instruction (AVX512-VNNI on 256-bit vectors, or AVX-VNNI):
// the plane loops then need no int16 pair sums, no widening, and no sign trick for 8-bit codes.
#if SFMP_AVX2 && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
#define SFMP_VNNI 1
#else
#define SFMP_VNNI 0
#endif

namespace sfmp_cpu {

constexpr int CHUNK = 32;        // output rows per unit of work = layouts/panel.py's PANEL_ROWS = 4 vectors (M = 1's block)
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
  bool vnni = SFMP_VNNI;  // the plane loops' dot product: VNNI's dpbusd, or (false) AVX2's maddubs pairs
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
// Prefill's decoded blocks (decode_chunk below): which widths, and from how many activation rows.
constexpr int64_t TILE_MIN_ROWS = 16;  // activation rows from which decoding a chunk once pays
inline bool tiled(int b) { return b == 3 || b == 5 || b == 6 || b == 7; }

// One chunk (CHUNK rows from i0 of row-block r) times mt activation rows into y[m][row]; `tile`:
// the chunk's decoded multi-plane blocks (decode_chunk) or null. portable: the scalar loop.
void run_chunk(const Layer& L, int64_t r, int64_t i0, int mt, const Acts* acts, float* const* y, bool portable,
               const int32_t* tile);
// Decodes the chunk's blocks of tiled() widths into `tile` (AVX2 builds; false otherwise or when none).
bool decode_chunk(const Layer& L, int64_t r, int64_t i0, std::vector<int32_t>& tile);

}  // namespace sfmp_cpu
