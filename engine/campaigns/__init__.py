"""Campaigns: who is enrolled in which nurture sequence, and what each step sends when."""
