// PROTOTYPE (benchmarks/conv_block_prototype.py; not used by dhp_jax): the backward of
// a conv block's leaky ReLU and 2×2 max pool written in one pass, with the two things the
// convolution's own backward needs from it: the bias gradient and the cotangent already
// transposed for the kernel-gradient matmul.
//
// z [O..., B, H, W, C] (pre-activation), pooled and g [O..., B, H/2, W/2, C] ->
//   dz  [O..., B, H, W, C]  each window's g to its first maximum, times leaky_relu'(z)
//   dzt [O..., C, B·H·W]     dz transposed
//   db  [O..., C]            Σ dz over B·H·W: blocks of 128 rows summed in order, the
//                            block sums added in order (a fixed order, unlike XLA's).
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static void WindowGrads(const float* z, const float* pooled, const float* g, float* dz,
                        int64_t b, int64_t h, int64_t w, int64_t c, float slope) {
  std::vector<int> winner(c);
  const int64_t ph = h / 2, pw = w / 2;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t py = 0; py < ph; ++py)
      for (int64_t px = 0; px < pw; ++px) {
        const int64_t at = ((bi * ph + py) * pw + px) * c;
        for (int64_t k = 0; k < c; ++k) winner[k] = -1;
        for (int n = 0; n < 4; ++n) {   // branch-free, so it vectorizes
          const float* zv = z + ((bi * h + py * 2 + n / 2) * w + px * 2 + n % 2) * c;
          for (int64_t k = 0; k < c; ++k) {
            const float value = zv[k], scaled = slope * value;
            const float v = value >= 0.0f ? value : scaled;
            const bool take = (winner[k] < 0) & (v == pooled[at + k]);
            winner[k] = take ? n : winner[k];
          }
        }
        for (int n = 0; n < 4; ++n) {
          const int64_t row = ((bi * h + py * 2 + n / 2) * w + px * 2 + n % 2) * c;
          for (int64_t k = 0; k < c; ++k) {
            const bool mine = (winner[k] == n) | ((n == 3) & (winner[k] < 0));
            const float gk = g[at + k];
            const float d = mine ? gk : 0.0f;
            const bool up = z[row + k] >= 0.0f;
            const float below = slope * (up ? 0.0f : d);
            dz[row + k] = (up ? d : 0.0f) + below;
          }
        }
      }
}

static void BiasAndTranspose(const float* dz, float* dzt, float* db, int64_t n, int64_t c) {
  std::vector<float> block(c);
  for (int64_t k = 0; k < c; ++k) db[k] = 0.0f;
  for (int64_t q0 = 0; q0 < n; q0 += 128) {
    const int64_t q1 = q0 + 128 < n ? q0 + 128 : n;
    for (int64_t k = 0; k < c; ++k) block[k] = 0.0f;
    for (int64_t q = q0; q < q1; ++q)
      for (int64_t k = 0; k < c; ++k) block[k] += dz[q * c + k];
    for (int64_t k = 0; k < c; ++k) db[k] += block[k];
    for (int64_t k = 0; k < c; ++k)
      for (int64_t q = q0; q < q1; ++q) dzt[k * n + q] = dz[q * c + k];
  }
}

static ffi::Error BlockGradImpl(ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> pooled,
                                ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dz,
                                ffi::ResultBuffer<ffi::F32> dzt,
                                ffi::ResultBuffer<ffi::F32> db, float slope) {
  auto dims = z.dimensions();
  const int64_t r = dims.size();
  const int64_t c = dims[r - 1], w = dims[r - 2], h = dims[r - 3], b = dims[r - 4];
  const int64_t n = b * h * w, outer = z.element_count() / (n * c);
  for (int64_t o = 0; o < outer; ++o) {
    float* dz_o = dz->typed_data() + o * n * c;
    WindowGrads(z.typed_data() + o * n * c, pooled.typed_data() + o * n / 4 * c,
                g.typed_data() + o * n / 4 * c, dz_o, b, h, w, c, slope);
    BiasAndTranspose(dz_o, dzt->typed_data() + o * n * c, db->typed_data() + o * c, n, c);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ProtoBlockGrad, BlockGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("slope"));
