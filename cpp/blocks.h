// Layer building blocks the per-architecture graphs compose (cpp/blocks/). Each block reads its weights
// as "<prefix><name>" from a WeightSource, takes only its partition's share (attention heads, FFN rows,
// each expert's rows), and returns a partial output that the graph sums across nodes.
#pragma once
#include "blocks/attention.h"
#include "blocks/feed_forward.h"
#include "blocks/latent_attention.h"
#include "blocks/moe.h"
