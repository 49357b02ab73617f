-- The reputation policy reads the brute-force counters (kernel migration 0007) since this
-- release: its own score table is gone. One set of counters for the whole server.
DROP TABLE IF EXISTS reputation_scores;
