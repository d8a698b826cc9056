"""Run machinery: snapshots, run folders, status lines, non-finite guard, image grids, fast paths."""
