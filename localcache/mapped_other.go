//go:build !linux

package localcache

// releaseMapped does nothing where MADV_PAGEOUT does not exist: the kernel
// reclaims the pages of Badger's mapped files under memory pressure only.
func (s *Store) releaseMapped() (int64, error) { return 0, nil }
