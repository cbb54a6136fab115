"""Scheduled work: the jobs and the due campaign steps they run."""
