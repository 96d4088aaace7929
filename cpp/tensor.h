// Weight storage types and their sizes, as in distributed-llama's .m format.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace dllama {

enum class FloatType : int32_t { F32 = 0, F16 = 1, Q40 = 2, Q80 = 3 };

constexpr int kBlockSize = 32;  // elements per Q40/Q80 block

#pragma pack(push, 1)
struct BlockQ40 {
    uint16_t d;       // f16 scale
    uint8_t qs[16];   // element j in the low nibble of qs[j], element j+16 in the high nibble
};
struct BlockQ80 {
    uint16_t d;       // f16 scale
    int8_t qs[32];
};
#pragma pack(pop)
static_assert(sizeof(BlockQ40) == 18, "Q40 block must be 18 bytes");
static_assert(sizeof(BlockQ80) == 34, "Q80 block must be 34 bytes");

inline const char* float_type_name(FloatType t) {
    switch (t) {
        case FloatType::F32: return "f32";
        case FloatType::F16: return "f16";
        case FloatType::Q40: return "q40";
        case FloatType::Q80: return "q80";
    }
    return "unknown";
}

inline bool is_quantized(FloatType t) { return t == FloatType::Q40 || t == FloatType::Q80; }

// Bytes taken by n elements of type t (n must be a multiple of 32 for quantized types).
inline size_t bytes_of(FloatType t, size_t n) {
    switch (t) {
        case FloatType::F32: return n * 4;
        case FloatType::F16: return n * 2;
        case FloatType::Q40: return n / kBlockSize * sizeof(BlockQ40);
        case FloatType::Q80: return n / kBlockSize * sizeof(BlockQ80);
    }
    throw std::invalid_argument("unknown float type " + std::to_string(static_cast<int>(t)));
}

}  // namespace dllama
