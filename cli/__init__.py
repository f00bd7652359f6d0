"""The `sniffer` command: the top layer, above `watch` and `reconcile`.

`cli.main` parses the command line and starts one of them; `cli.uninstall` strips
Sniffer's finalizer from every tracked pod. Nothing below imports this package.
"""
