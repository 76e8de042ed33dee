// Shared pieces of the CLI's reports: accuracy rows and timing.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "check/case.h"
#include "table.h"

namespace mha::cli {

Table accuracy_table();
std::vector<std::string> accuracy_row(const std::string& id, const check::Case& c, Isa isa,
                                      const check::Accuracy& a);

// Median milliseconds of fn over repeats, after one warm-up, spending about `budget_s` seconds.
double time_ms(const std::function<void()>& fn, double budget_s = 0.5);

}  // namespace mha::cli
