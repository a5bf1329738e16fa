"""rnncomp: a symbolic autodiff compiler for recurrent networks."""
