// Markdown tables with aligned columns, for the CLI's reports.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

namespace mha::cli {

class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }

  void print() const {
    std::vector<std::size_t> w(header_.size());
    for (std::size_t c = 0; c < header_.size(); ++c) {
      w[c] = width(header_[c]);
      for (const auto& r : rows_) w[c] = std::max(w[c], width(r[c]));
    }
    line(header_, w);
    std::string sep = "|";
    for (std::size_t c = 0; c < w.size(); ++c) sep += std::string(w[c] + 2, '-') + "|";
    fmt::print("{}\n", sep);
    for (const auto& r : rows_) line(r, w);
    std::fflush(stdout);
  }

 private:
  // Display width: UTF-8 continuation bytes take no column.
  static std::size_t width(const std::string& s) {
    return std::size_t(std::count_if(s.begin(), s.end(), [](char ch) { return (ch & 0xC0) != 0x80; }));
  }
  static void line(const std::vector<std::string>& cells, const std::vector<std::size_t>& w) {
    std::string out = "|";
    for (std::size_t c = 0; c < cells.size(); ++c)
      out += " " + cells[c] + std::string(w[c] - width(cells[c]), ' ') + " |";
    fmt::print("{}\n", out);
  }

  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace mha::cli
