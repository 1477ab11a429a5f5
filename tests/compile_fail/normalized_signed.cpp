// Must not compile: a normalization by a signed function would divide by a
// sum that can vanish. The error is one static_assert sentence.
#include <attnsink/attnsink.hpp>

attnsink::attention_of<attnsink::norm::normalized<attnsink::fn::identity>> a;
int main() { return 0; }
