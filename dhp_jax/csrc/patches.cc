// A unit-stride NHWC convolution's patches (im2col) and the sum of their cotangent back
// onto the input (col2im), as XLA FFI handlers for the CPU; built and loaded by
// dhp_jax/native.py. Leading dimensions before [H, W, C] are one batch (vmap's too).
// Why: inside a while loop XLA:CPU emits both as single-threaded per-element loops
// (BUILD_NOTES.md section 2.9); here they are row copies and contiguous adds.
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// out[b, y, x, i, j, :] = x[b, y + i - top, x + j - left, :] (0 outside x).

static ffi::Error Im2colImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out,
                             int64_t kh, int64_t kw, int64_t top, int64_t left,
                             int64_t rows, int64_t cols) {
  auto dims = x.dimensions();
  const int64_t rank = dims.size();
  const int64_t c = dims[rank - 1], w = dims[rank - 2], h = dims[rank - 3];
  const int64_t batch = x.element_count() / (h * w * c);
  const float* in = x.typed_data();
  float* o = out->typed_data();
  const int64_t run = kw * c;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t y = 0; y < rows; ++y)
      for (int64_t xo = 0; xo < cols; ++xo)
        for (int64_t i = 0; i < kh; ++i) {
          float* dst = o + ((((b * rows + y) * cols + xo) * kh + i) * kw) * c;
          const int64_t r = y + i - top;
          if (r < 0 || r >= h) { std::memset(dst, 0, run * sizeof(float)); continue; }
          const int64_t first = xo - left;
          if (first >= 0 && first + kw <= w) {
            std::memcpy(dst, in + ((b * h + r) * w + first) * c, run * sizeof(float));
            continue;
          }
          for (int64_t j = 0; j < kw; ++j) {
            const int64_t q = first + j;
            if (q < 0 || q >= w) std::memset(dst + j * c, 0, c * sizeof(float));
            else std::memcpy(dst + j * c, in + ((b * h + r) * w + q) * c, c * sizeof(float));
          }
        }
  return ffi::Error::Success();
}

// grad[b, y + i - top, x + j - left, :] += cot[b, y, x, i, j, :], offsets (i, j) from the
// last to the first, every sum starting from 0: the order of ops._unit_stride_patches'
// XLA backward, so every sum rounds the same.
static ffi::Error Col2imImpl(ffi::Buffer<ffi::F32> cot, ffi::ResultBuffer<ffi::F32> out,
                             int64_t top, int64_t left) {
  auto cd = cot.dimensions();
  const int64_t rank = cd.size();
  const int64_t c = cd[rank - 1], kw = cd[rank - 2], kh = cd[rank - 3];
  const int64_t cols = cd[rank - 4], rows = cd[rank - 5];
  auto od = out->dimensions();
  const int64_t h = od[od.size() - 3], w = od[od.size() - 2];
  const int64_t batch = cot.element_count() / (rows * cols * kh * kw * c);
  const float* g = cot.typed_data();
  float* o = out->typed_data();
  std::memset(o, 0, batch * h * w * c * sizeof(float));
  // Windows in row-major order reach each pixel with their offsets in reverse row-major
  // order: the XLA backward's order.
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t y = 0; y < rows; ++y)
      for (int64_t xo = 0; xo < cols; ++xo) {
        const float* src = g + (((b * rows + y) * cols + xo) * kh * kw) * c;
        for (int64_t i = 0; i < kh; ++i) {
          const int64_t r = y + i - top;
          for (int64_t j = 0; j < kw; ++j, src += c) {
            const int64_t q = xo + j - left;
            if (r < 0 || r >= h || q < 0 || q >= w) continue;
            float* dst = o + ((b * h + r) * w + q) * c;
            for (int64_t k = 0; k < c; ++k) dst[k] += src[k];
          }
        }
      }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DhpIm2col, Im2colImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("left")
                                  .Attr<int64_t>("rows")
                                  .Attr<int64_t>("cols"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DhpCol2im, Col2imImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("left"));
