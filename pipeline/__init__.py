"""Host-side builders: Alpine repository reader, rootfs, squashfs, verity, initramfs, disks."""
