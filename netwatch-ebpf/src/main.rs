#![no_std]
#![no_main]
// The BPF programs land here in the next commit.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
