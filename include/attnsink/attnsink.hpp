// attnsink/attnsink.hpp — the core: policies, the attention type and the
// reference backend. The CPU backend (xsimd + oneTBB) is attnsink/cpu.hpp.
#pragma once

#include "attention.hpp"
#include "axis.hpp"
#include "backend/reference.hpp"
#include "bias.hpp"
#include "config.hpp"
#include "error.hpp"
#include "fn.hpp"
#include "mask.hpp"
#include "norm.hpp"
#include "pos.hpp"
#include "score.hpp"
#include "tensor.hpp"
