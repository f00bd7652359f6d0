"""The watcher: reflector, store, work queue, rate limiters, controller, finalizers, leader."""
