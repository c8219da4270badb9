"""Looking inside a model: complexity per layer (params, FLOPs, memory) and receptive fields."""
