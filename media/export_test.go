package media

// WaiterCount is how many media IDs have downloads registered as waiting.
func WaiterCount(s *Service) int {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	return len(s.waiters)
}
