"""Detection: per-flow scorers and rarity tiers, baselines, alerts."""
