"""The boundary maps of the retention, one module each (registered by mirasc.components on first use)."""
