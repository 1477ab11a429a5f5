// attnsink/cpu.hpp — the core plus the fused CPU backend (link attnsink::cpu).
#pragma once

#include "attnsink.hpp"
#include "backend/cpu.hpp"
