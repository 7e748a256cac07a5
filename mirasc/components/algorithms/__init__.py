"""Learning algorithms: one module per `algorithm` a spec can declare (mirasc.components.base.LearningAlgorithm)."""
