"""After the masks: latency, export bundles, recovery by fine-tuning (compaction itself is the engine's: core.compact)."""
