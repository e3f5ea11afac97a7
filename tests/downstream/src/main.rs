use interrole::{Bus, Loopback};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct RoleGracefulRecycle { role_name: String }
interrole::impl_event!(RoleGracefulRecycle = "interrole.role.graceful-recycle");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fabric = Loopback::new(); // in-process; buses on it act as separate instances
    let controller = Bus::builder().instance("controller").transport(fabric.clone()).build()?;
    let worker = Bus::builder().instance("worker-1").transport(fabric).build()?;
    let _guard = worker.subscribe::<RoleGracefulRecycle, _>(|e| println!("recycle {}", e.role_name));
    controller.publish(RoleGracefulRecycle { role_name: "worker".into() })?;
    Ok(()) // dropping the guard unsubscribes
}
