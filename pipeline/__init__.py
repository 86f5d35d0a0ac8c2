"""Orchestration-side package: config, grid, train/eval entry points, tracking, tables, CLI."""
