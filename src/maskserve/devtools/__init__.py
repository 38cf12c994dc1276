"""What developing and measuring maskserve needs besides the service: synthetic pictures, a throw-away
PostgreSQL, a real S3-compatible server. The tests and the benchmarks use these; the service never does
(an import contract keeps it so)."""
