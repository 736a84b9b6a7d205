"""The benchmarks themselves: loaders, evaluators, voting keys and seeded splits."""
