# The RuntimeDefault seccomp profile: an allow list. A syscall no rule
# allows fails with EPERM, including any syscall a newer kernel adds.
#
# Format (read by runtime/src/seccomp.rs): a rule is `<conditions>: <names>`;
# an indented line continues the names of the rule above. Conditions, all
# of which must hold (`always` when there are none):
#   cap=CAP_X      the container holds CAP_X
#   nocap=CAP_X    the container does not hold CAP_X
#   arch=a,b       this machine is one of x86_64, aarch64
#   errno=E        refuse with errno E (ENOSYS, EPERM) instead of allowing
#   argN=op:v[:m]  argument N: eq v, ne v, or masked_eq v under mask m
# Rules for the same syscall are alternatives: it is allowed when any applies.
# The set is the well-known container default (Docker's, as CRI-O and
# containerd ship it), grouped by the capability that makes a syscall safe.

always:
  accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir
  chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres
  clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
  clock_nanosleep_time64 close close_range connect copy_file_range creat dup
  dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait
  epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
  exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
  fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
  fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr
  fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
  ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv
  futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
  geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
  getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
  getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid
  getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32
  getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
  io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
  ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule
  landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr
  link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr
  lstat lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret
  mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2
  mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
  mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
  mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
  name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
  pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect
  poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
  process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
  readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64
  recvmsg remap_file_pages removexattr rename renameat renameat2
  restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
  rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
  rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
  sched_getparam sched_get_priority_max sched_get_priority_min
  sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
  sched_setaffinity sched_setattr sched_setparam sched_setscheduler
  sched_yield seccomp select semctl semget semop semtimedop
  semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
  setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32
  setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
  setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid
  setsockopt set_thread_area set_tid_address setuid setuid32 setxattr shmat
  shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
  sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx
  symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
  timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
  timer_settime timer_settime64 timerfd_create timerfd_gettime
  timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
  truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat
  utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev

# Every socket family but AF_VSOCK (40), which reaches the host's hypervisor.
arg0=ne:40: socket

# The execution domains programs ask for: Linux, with UNAME26 (0x20000),
# PER_LINUX32 (0x8), both, and the query 0xffffffff.
arg0=eq:0x0: personality
arg0=eq:0x8: personality
arg0=eq:0x20000: personality
arg0=eq:0x20008: personality
arg0=eq:0xffffffff: personality

arch=x86_64: arch_prctl modify_ldt
arch=aarch64: arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint
  cacheflush set_tls

# Without CAP_SYS_ADMIN, clone may make no namespace (its flags are the first
# argument on x86 and arm64): CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID and NEWNET. clone3 takes its flags through a pointer, which seccomp
# cannot read: ENOSYS makes libc fall back to clone.
nocap=CAP_SYS_ADMIN arg0=masked_eq:0x0:0x7e020000: clone
nocap=CAP_SYS_ADMIN errno=ENOSYS: clone3

cap=CAP_SYS_ADMIN: bpf clone clone3 fanotify_init fsconfig fsmount fsopen
  fspick lookup_dcookie mount mount_setattr move_mount open_tree
  perf_event_open pivot_root quotactl quotactl_fd setdomainname sethostname
  setns syslog umount umount2 unshare
cap=CAP_BPF: bpf
cap=CAP_PERFMON: perf_event_open
cap=CAP_SYSLOG: syslog
cap=CAP_SYS_BOOT: reboot
cap=CAP_SYS_CHROOT: chroot
cap=CAP_SYS_MODULE: delete_module finit_module init_module
cap=CAP_SYS_PACCT: acct
cap=CAP_SYS_PTRACE: kcmp pidfd_getfd process_madvise process_vm_readv
  process_vm_writev ptrace userfaultfd
cap=CAP_SYS_RAWIO: ioperm iopl
cap=CAP_SYS_TIME: clock_settime clock_settime64 settimeofday stime
cap=CAP_SYS_TTY_CONFIG: vhangup
cap=CAP_SYS_NICE: get_mempolicy mbind set_mempolicy set_mempolicy_home_node
cap=CAP_DAC_READ_SEARCH: open_by_handle_at
