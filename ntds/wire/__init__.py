"""The wire between sensors and the aggregator: the message schema and the CURVE keys."""
