"""Subcommands of ``boq-vpr`` (see ``boq_vpr.cli.COMMANDS``)."""
