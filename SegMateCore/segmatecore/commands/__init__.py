"""One module per ``segmate`` subcommand (see segmatecore.cli)."""
