"""Memory architectures: one module per `memory` a spec can declare (mirasc.components.base.MemoryArchitecture)."""
