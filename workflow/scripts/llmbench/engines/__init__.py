"""The engines that generate text (one module each, behind engines.base.Engine) and the registry of every tool."""
