"""Stage 4: reading results files into tables, statistics and plots; never loads a model."""
