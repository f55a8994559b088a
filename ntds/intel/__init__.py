"""Threat intelligence: indicators, the formats they come in, and matching them against flows."""
