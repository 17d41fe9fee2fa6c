"""Thin CLI subcommands: parse arguments, call one library function, print the result."""
