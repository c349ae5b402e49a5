/* Stand-in for the macOS SDK's TargetConditionals.h, used only by the
 * cross-target type-check in .ci/run (there is no macOS SDK on the CI
 * machine, and nothing built there is linked or run). It defines the values
 * the SDK header gives for an arm64 macOS target, which is all that C code
 * in our dependency tree (ring's base.h) reads from it. */
#ifndef DAEMONEYE_CI_TARGET_CONDITIONALS_H
#define DAEMONEYE_CI_TARGET_CONDITIONALS_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_TV 0
#define TARGET_OS_SIMULATOR 0
#define TARGET_CPU_ARM64 1
#define TARGET_CPU_X86_64 0
#define TARGET_RT_LITTLE_ENDIAN 1
#define TARGET_RT_64_BIT 1
#endif
