"""`bluefield-coordinator ctl`: the admin's command line over the API
(`parser` the arguments, `settings` where to connect, `commands` the calls,
`render` text and JSON)."""
