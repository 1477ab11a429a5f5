// Must not compile: two policies for the same axis.
#include <attnsink/attnsink.hpp>

attnsink::attention_of<attnsink::norm::softmax, attnsink::norm::sigmoid> a;
int main() { return 0; }
