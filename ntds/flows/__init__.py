"""Flow records: capture checks, the NFStream meter and the 87 features, labels, flow files."""
