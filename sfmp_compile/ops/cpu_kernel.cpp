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
#include "cpu_kernel.h"

namespace {

using namespace sfmp_cpu;


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

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& bits,
                      const at::Tensor& block_offset, const at::Tensor& group_order, const at::Tensor& segment_ptr,
                      const at::Tensor& scales, const at::Tensor& zeros, const at::Tensor& row_perm,
                      const at::Tensor& col_perm, int64_t out_features, int64_t in_features, int64_t block_rows,
                      int64_t group_size, int64_t flags) {
  const bool portable = flags & 1, residual = flags & 2, panel = flags & 4, no_vnni = flags & 8;
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
  L.vnni = L.vnni && !no_vnni;

  // A decode step makes ~200 calls of a few microseconds each: a contiguous fp32 x (what compiled
  // graphs pass) is read as it is, and the output is allocated in its final shape, so no
  // reshape / to / contiguous goes through the dispatcher.
  const bool f32 = x.scalar_type() == at::kFloat;
  at::Tensor xf = f32 && x.is_contiguous() ? x : x.to(at::kFloat).contiguous();
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  auto shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor out = at::empty(shape, xf.options());  // every row is written by its chunk
  if (M == 0 || N == 0) return f32 ? out : out.to(x.scalar_type());

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
      if (use_tile && decode_chunk(L, tiles[t].first, tiles[t].second, tile)) tp = tile.data();
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
  return f32 ? out : out.to(x.scalar_type());
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
