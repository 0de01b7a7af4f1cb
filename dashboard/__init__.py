"""The live operator dashboard: `citystream dashboard` (see docs/dashboard.md)."""
