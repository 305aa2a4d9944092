"""The command-line interface: argument parsing, writing results, printing summaries."""
