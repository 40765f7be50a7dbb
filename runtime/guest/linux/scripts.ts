/**
 * The two shell scripts of the guest, run by Debian's busybox-static (whose shell runs its applets
 * without symlinks, so the scripts call `mount`, `insmod`, ... directly).
 *
 * Markers printed on the console (ttyS0), one per line, for the host to match:
 *   MEDIC-INITRAMFS start t=<uptime>                 /init began (initramfs)
 *   MEDIC-INITRAMFS insmod <module path> t=<uptime>  after each module, only with `medic.debug` on the command line
 *   MEDIC-INITRAMFS modules loaded t=<uptime>
 *   MEDIC-INITRAMFS-ERROR <what>                     a module failed to load, the mount failed, ...
 *   MEDIC-INITRAMFS root disk t=<uptime>             /dev/sda1 appeared
 *   MEDIC-INITRAMFS no root disk t=<uptime>          it did not within medic.rootwait= seconds (default 10); powers off
 *   MEDIC-INITRAMFS switch_root t=<uptime>
 *   MEDIC-GUEST-START t=<uptime>                     /sbin/init of the root fs began
 *   MEDIC-GUEST-READ files=<n> t=<uptime>            every file of /data/SHA256SUMS was read and checked
 *   MEDIC-GUEST-ERROR <what>                         a checksum failed, a write did not read back, ...
 *   MEDIC-GUEST-WROTE path=/medic-write.bin bytes=<n> sha256=<hex> t=<uptime>   written, synced, re-read from disk
 *   MEDIC-GUEST-READY t=<uptime> errors=<n>          the boot's work is done (the host's "OS ready")
 *   MEDIC-GUEST-WAIT t=<uptime>                      only with `medic.wait=S` on the command line: waiting up to
 *                                                    S seconds for a line on the console (the host's "go")
 *   MEDIC-GUEST-AFTER path=/medic-after.bin bytes=<n> sha256=<hex> t=<uptime>   after the go (or at once without
 *                                                    medic.wait): a second file written, synced, re-read
 *   MEDIC-GUEST-DONE t=<uptime> errors=<n>           the root fs is remounted read-only (journal checkpointed,
 *                                                    so the disk is clean); then `poweroff -f`
 *
 * The wait lets a host run the guest's last disk I/O at a moment of its choosing: a streaming deployment
 * sends the go once the VMM is off, so that I/O is the guest's own, with no VMM in its path.
 */

/** The initramfs /init. `@MODULES@` is replaced by the module paths, in load order. */
export const INITRAMFS_INIT = `#!/bin/busybox sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
up() { cut -d' ' -f1 /proc/uptime; }
echo "MEDIC-INITRAMFS start t=$(up)"
wait_s=10
debug=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    medic.rootwait=*) wait_s="\${arg#medic.rootwait=}" ;;
    medic.debug) debug=1 ;;
  esac
done
for m in @MODULES@; do
  insmod "/lib/modules/$m" || echo "MEDIC-INITRAMFS-ERROR insmod $m"
  [ "$debug" = 1 ] && echo "MEDIC-INITRAMFS insmod $m t=$(up)"
done
echo "MEDIC-INITRAMFS modules loaded t=$(up)"
ticks=$((wait_s * 10))
i=0
while [ ! -b /dev/sda1 ]; do
  if [ "$i" -ge "$ticks" ]; then
    echo "MEDIC-INITRAMFS no root disk t=$(up)"
    poweroff -f
    sleep 5
  fi
  i=$((i + 1))
  usleep 100000
done
echo "MEDIC-INITRAMFS root disk t=$(up)"
if ! mount -t ext4 -o rw /dev/sda1 /mnt/root; then
  echo "MEDIC-INITRAMFS-ERROR mount /dev/sda1 failed"
  poweroff -f
  sleep 5
fi
mount --move /dev /mnt/root/dev
mount --move /sys /mnt/root/sys
echo "MEDIC-INITRAMFS switch_root t=$(up)"
mount --move /proc /mnt/root/proc
exec switch_root /mnt/root /sbin/init
`;

/** The root file system's /sbin/init. */
export const ROOTFS_INIT = `#!/bin/busybox sh
export PATH=/bin:/sbin
up() { cut -d' ' -f1 /proc/uptime; }
errors=0
echo "MEDIC-GUEST-START t=$(up)"
mount -t tmpfs tmpfs /tmp
if sha256sum -c /data/SHA256SUMS > /tmp/sums.out 2>&1; then :; fi
n=$(grep -c ': OK$' /tmp/sums.out)
bad=$(grep -v ': OK$' /tmp/sums.out)
if [ -n "$bad" ]; then
  echo "$bad" | while read -r line; do echo "MEDIC-GUEST-ERROR checksum $line"; done
  errors=$((errors + $(echo "$bad" | wc -l)))
fi
echo "MEDIC-GUEST-READ files=$n t=$(up)"
src=/data/write-source.bin
dst=/medic-write.bin
want=$(sha256sum "$src" | cut -d' ' -f1)
rm -f "$dst"
cp "$src" "$dst"
sync
echo 3 > /proc/sys/vm/drop_caches
got=$(sha256sum "$dst" | cut -d' ' -f1)
bytes=$(wc -c < "$dst")
if [ "$got" != "$want" ]; then
  echo "MEDIC-GUEST-ERROR write readback $dst sha256=$got expected=$want"
  errors=$((errors + 1))
fi
echo "MEDIC-GUEST-WROTE path=$dst bytes=$bytes sha256=$got t=$(up)"
echo "MEDIC-GUEST-READY t=$(up) errors=$errors"
wait_s=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    medic.wait=*) wait_s="\${arg#medic.wait=}" ;;
  esac
done
if [ "$wait_s" -gt 0 ]; then
  echo "MEDIC-GUEST-WAIT t=$(up)"
  if ! read -t "$wait_s" go < /dev/console; then
    echo "MEDIC-GUEST-ERROR no go from the host within $wait_s s"
    errors=$((errors + 1))
  fi
fi
src=/data/mid-512k.bin
dst=/medic-after.bin
want=$(sha256sum "$src" | cut -d' ' -f1)
rm -f "$dst"
cp "$src" "$dst"
sync
echo 3 > /proc/sys/vm/drop_caches
got=$(sha256sum "$dst" | cut -d' ' -f1)
bytes=$(wc -c < "$dst")
if [ "$got" != "$want" ]; then
  echo "MEDIC-GUEST-ERROR write readback $dst sha256=$got expected=$want"
  errors=$((errors + 1))
fi
echo "MEDIC-GUEST-AFTER path=$dst bytes=$bytes sha256=$got t=$(up)"
umount /tmp
if ! mount -o remount,ro /; then
  echo "MEDIC-GUEST-ERROR remount read-only failed"
  errors=$((errors + 1))
fi
echo "MEDIC-GUEST-DONE t=$(up) errors=$errors"
poweroff -f
sleep 5
`;
